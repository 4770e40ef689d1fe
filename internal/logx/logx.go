// Package logx sets up greenswap's zerolog logger and redacts secrets from
// anything that might be logged.
package logx

import (
	"io"
	"net/url"
	"os"
	"regexp"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"
)

// New returns a logger writing to w: human console output when format is
// "console", or "auto" and w is a terminal; JSON lines otherwise.
func New(w io.Writer, format, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	out := w
	if format == "console" || (format == "auto" && IsTerminal(w)) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), err
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

var kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// RedactDSN hides the password in a connection string, URL or key=value form.
func RedactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return kvPassword.ReplaceAllString(dsn, "${1}xxxxx")
}

// Redact removes any connection-string password found inside a free-form
// message (for example a driver error that echoes the DSN).
func Redact(msg string, dsn string) string {
	if dsn == "" {
		return msg
	}
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if p, has := u.User.Password(); has && p != "" {
			msg = regexp.MustCompile(regexp.QuoteMeta(p)).ReplaceAllString(msg, "xxxxx")
		}
	}
	return kvPassword.ReplaceAllString(msg, "${1}xxxxx")
}

// Ms is d in milliseconds, to a tenth: log fields carry durations as
// numbers whose unit is in the field's name ("took_ms"), so the console
// and JSON lines read the same and neither depends on zerolog's
// package-wide duration settings.
func Ms(d time.Duration) float64 {
	return float64(d.Round(100*time.Microsecond)) / float64(time.Millisecond)
}
