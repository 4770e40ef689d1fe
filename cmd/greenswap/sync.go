package main

import "github.com/urfave/cli/v2"

// syncCommand is a placeholder until the sync command lands.
func syncCommand() *cli.Command {
	return &cli.Command{Name: "sync", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}

// pauseCommand is a placeholder until the pause command lands.
func pauseCommand() *cli.Command {
	return &cli.Command{Name: "pause", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}

// resumeCommand is a placeholder until the resume command lands.
func resumeCommand() *cli.Command {
	return &cli.Command{Name: "resume", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}
