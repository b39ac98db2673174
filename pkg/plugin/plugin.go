// Package plugin holds what both CNI plugins share: the error mapping to CNI
// codes, the datastore client and the log file. It stays small on purpose:
// its imports are the plugins' start-up time.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/netconf"
	"github.com/tabby-net/tabby/pkg/store"
)

// CodeInternal is tabby's code for an unexpected failure.
const CodeInternal = 100

// Deadline bounds one plugin call's datastore work, so an unreachable etcd
// gives code 11 within seconds instead of hanging the runtime.
const Deadline = 4500 * time.Millisecond

// ToCNI turns any error into the CNI error object with the right code.
func ToCNI(err error) *types.Error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	var ne *netconf.Error
	if errors.As(err, &ne) {
		return types.NewError(uint(ne.Code), ne.Msg, "")
	}
	if c := ipam.CodeOf(err); c != 0 {
		return types.NewError(uint(c), err.Error(), "")
	}
	if store.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(netconf.CodeTryAgain, err.Error(), "try again when etcd is reachable")
	}
	if errors.Is(err, store.ErrConflict) {
		return types.NewError(netconf.CodeTryAgain, err.Error(), "")
	}
	return types.NewError(CodeInternal, err.Error(), "")
}

// OpenKV connects to etcd as the netconf says.
func OpenKV(c *netconf.NetConf) (store.KV, error) {
	e := c.EtcdConfig()
	kv, err := store.NewHTTP(store.Config{Endpoints: e.EndpointList(), CAFile: e.CACertFile, CertFile: e.CertFile, KeyFile: e.KeyFile})
	if err != nil {
		return nil, &netconf.Error{Code: netconf.CodeBadConfig, Msg: "etcd settings: " + err.Error()}
	}
	return kv, nil
}

// Logger appends to the netconf's log_file; plugins must never write logs to
// stdout, which carries the result.
type Logger struct {
	f     *os.File
	debug bool
	pre   string
}

// NewLogger opens path; a log that cannot be opened is dropped, never fatal.
func NewLogger(path, level, prefix string) *Logger {
	l := &Logger{debug: strings.EqualFold(level, "debug"), pre: prefix}
	if path == "" {
		return l
	}
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	l.f, _ = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	return l
}

func (l *Logger) write(level, format string, a ...any) {
	if l == nil || l.f == nil {
		return
	}
	fmt.Fprintf(l.f, "%s %s %s %s\n", time.Now().Format(time.RFC3339Nano), level, l.pre, fmt.Sprintf(format, a...))
}

// Infof logs at info level.
func (l *Logger) Infof(format string, a ...any) { l.write("info", format, a...) }

// Errorf logs at error level.
func (l *Logger) Errorf(format string, a ...any) { l.write("error", format, a...) }

// Debugf logs only at debug level.
func (l *Logger) Debugf(format string, a ...any) {
	if l != nil && l.debug {
		l.write("debug", format, a...)
	}
}

// Close closes the log file.
func (l *Logger) Close() {
	if l != nil && l.f != nil {
		l.f.Close()
	}
}
