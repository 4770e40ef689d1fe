package main

import "github.com/urfave/cli/v2"

// planCommand is a placeholder until the plan command lands.
func planCommand() *cli.Command {
	return &cli.Command{Name: "plan", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}

// statusCommand is a placeholder until the status command lands.
func statusCommand() *cli.Command {
	return &cli.Command{Name: "status", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}
