package wgdev

import (
	"errors"
	"log/slog"
)

var errFake = errors.New("fake failure")

func errorsIs(err, target error) bool { return errors.Is(err, target) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
