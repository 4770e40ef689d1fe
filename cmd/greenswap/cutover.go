package main

import "github.com/urfave/cli/v2"

// cutoverCommand is a placeholder until the cutover command lands.
func cutoverCommand() *cli.Command {
	return &cli.Command{Name: "cutover", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}

// rollbackCommand is a placeholder until the rollback command lands.
func rollbackCommand() *cli.Command {
	return &cli.Command{Name: "rollback", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}

// finalizeCommand is a placeholder until the finalize command lands.
func finalizeCommand() *cli.Command {
	return &cli.Command{Name: "finalize", Usage: "(not yet implemented)", Action: func(*cli.Context) error { return errNotImplemented }}
}
