package main

import "github.com/urfave/cli/v2"

// verifyCommand is a placeholder until the verify command lands.
func verifyCommand() *cli.Command {
	return &cli.Command{Name: "verify", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}
