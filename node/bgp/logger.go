package bgp

import (
	"context"
	"log/slog"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// slogAdapter feeds GoBGP's logger interface into log/slog, so the daemon
// has one log format and GoBGP does not write its own logrus output.
type slogAdapter struct{ l *slog.Logger }

var _ gobgplog.Logger = slogAdapter{}

func (a slogAdapter) log(level slog.Level, msg string, fields gobgplog.Fields) {
	if !a.l.Enabled(context.Background(), level) {
		return
	}
	attrs := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		attrs = append(attrs, k, v)
	}
	a.l.Log(context.Background(), level, "gobgp: "+msg, attrs...)
}

func (a slogAdapter) Panic(msg string, f gobgplog.Fields) {
	a.log(slog.LevelError, msg, f)
	panic("gobgp: " + msg)
}

// Fatal is only used by GoBGP for its gRPC listener, which tabby never
// starts. Panicking keeps a library from exiting the daemon behind its back.
func (a slogAdapter) Fatal(msg string, f gobgplog.Fields) {
	a.log(slog.LevelError, msg, f)
	panic("gobgp fatal: " + msg)
}

func (a slogAdapter) Error(msg string, f gobgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a slogAdapter) Warn(msg string, f gobgplog.Fields)  { a.log(slog.LevelWarn, msg, f) }
func (a slogAdapter) Info(msg string, f gobgplog.Fields)  { a.log(slog.LevelInfo, msg, f) }
func (a slogAdapter) Debug(msg string, f gobgplog.Fields) { a.log(slog.LevelDebug, msg, f) }

// SetLevel is ignored: the slog handler decides.
func (a slogAdapter) SetLevel(gobgplog.LogLevel) {}

// GetLevel reports what the handler lets through; GoBGP uses it to skip
// building debug messages.
func (a slogAdapter) GetLevel() gobgplog.LogLevel {
	ctx := context.Background()
	switch {
	case a.l.Enabled(ctx, slog.LevelDebug):
		return gobgplog.DebugLevel
	case a.l.Enabled(ctx, slog.LevelInfo):
		return gobgplog.InfoLevel
	case a.l.Enabled(ctx, slog.LevelWarn):
		return gobgplog.WarnLevel
	default:
		return gobgplog.ErrorLevel
	}
}

// levelFloor wraps a handler and drops records below min.
type levelFloor struct {
	slog.Handler
	min slog.Level
}

func (h levelFloor) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelFloor) WithAttrs(as []slog.Attr) slog.Handler {
	return levelFloor{h.Handler.WithAttrs(as), h.min}
}

func (h levelFloor) WithGroup(name string) slog.Handler {
	return levelFloor{h.Handler.WithGroup(name), h.min}
}
