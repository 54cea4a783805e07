package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/sluice-vpn/sluice/gateway"
	"github.com/sluice-vpn/sluice/peers"
)

// Exit statuses of sluice commands (documented in `sluice peer --help` and
// the README). Commands with a status of their own (check, doctor, lint:
// 1 when they find a problem) say so in their help.
const (
	exitOK         = 0 // success
	exitFailure    = 1 // the operation failed
	exitUsage      = 2 // bad arguments or flags, or an invalid configuration file
	exitNotFound   = 3 // no such peer
	exitNotRunning = 4 // the command needs the daemon and none answers
	exitConflict   = 5 // a name, key or address is already taken
)

// exitCodesHelp is the exit status table for help texts.
const exitCodesHelp = `Exit status: 0 ok, 1 failure, 2 usage or configuration error, 3 peer not
found, 4 daemon not running (commands that need it), 5 name, key or address
already taken (conflict).`

// usageError marks a wrong command line: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCodeOf maps an error returned by a command to its exit status.
func exitCodeOf(err error) int {
	var (
		ee  exitError
		ue  usageError
		ce  *gateway.ConfigError
		ces gateway.ConfigErrors
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue), errors.As(err, &ce), errors.As(err, &ces), errors.Is(err, peers.ErrInvalidName):
		return exitUsage
	case errors.Is(err, peers.ErrNotFound):
		return exitNotFound
	case errors.Is(err, gateway.ErrNotRunning):
		return exitNotRunning
	case errors.Is(err, peers.ErrExists), errors.Is(err, peers.ErrImportConflict):
		return exitConflict
	}
	return exitFailure
}

// usageArgs wraps a cobra argument check so that its error exits with 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// usageFlagErrors makes flag parsing errors of cmd and its children exit
// with 2.
func usageFlagErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
}
