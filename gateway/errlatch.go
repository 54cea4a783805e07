package gateway

import "log/slog"

// errorLatch logs a recurring error of a poll loop once, again only when it
// changes, and once more when it clears: a damaged peer store polled every
// half second is one log line, not seven thousand an hour.
type errorLatch struct {
	last string // the error last logged; "" when the last poll succeeded
}

// report logs err under msg if it differs from the last one reported.
func (l *errorLatch) report(log *slog.Logger, msg string, err error) {
	switch {
	case err == nil && l.last != "":
		log.Info(msg+" recovered", "after", l.last)
		l.last = ""
	case err != nil && err.Error() != l.last:
		log.Error(msg, "err", err)
		l.last = err.Error()
	}
}
