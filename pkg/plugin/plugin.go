// Package plugin holds what both CNI plugins share: the error mapping to CNI
// codes, the datastore client and the log file. It stays small on purpose:
// its imports are the plugins' start-up time.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

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

// Main runs a plugin's verbs through skel. It first makes sure stdin is a JSON
// object, because skel would answer malformed JSON with the CNI spec's code 6,
// and tabby's contract (SPEC.md) promises code 4 for a bad configuration.
func Main(funcs skel.CNIFuncs, about string) {
	if cmd := os.Getenv("CNI_COMMAND"); cmd != "" && cmd != "VERSION" {
		data, err := io.ReadAll(os.Stdin)
		var obj map[string]json.RawMessage
		if err == nil {
			err = json.Unmarshal(data, &obj)
		}
		if err != nil {
			e := types.NewError(netconf.CodeBadConfig, "network configuration on stdin is not a JSON object: "+err.Error(), "")
			_ = e.Print()
			os.Exit(1)
		}
		r, w, perr := os.Pipe()
		if perr == nil {
			go func() { w.Write(data); w.Close() }()
			os.Stdin = r
		}
	}
	skel.PluginMainFuncs(funcs, version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), about)
}
