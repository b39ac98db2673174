// Package cnierr is the one table of the error codes tabby's plugins answer
// with, and the error type that carries them. The README's table of codes is
// generated from Codes; a test runs a case that answers each of them.
package cnierr

import (
	"errors"
	"fmt"
	"strings"
)

// Code is a CNI error code.
type Code uint

// The codes. 4 and 7 are tabby's contract (the CNI specification numbers
// them the other way round: 4 environment, 7 configuration); 11 is the
// CNI spec's "try again later"; tabby's own start at 100.
const (
	BadConfig        Code = 4   // bad network configuration
	BadArgs          Code = 7   // bad environment or arguments
	TryAgain         Code = 11  // etcd or the node daemon unreachable
	Internal         Code = 100 // anything unexpected
	AddressInUse     Code = 101
	NoPool           Code = 102
	PoolExhausted    Code = 103
	PoolDisabled     Code = 104
	NotAffine        Code = 105
	PolicyNotInForce Code = 110
	DatastoreFormat  Code = 120
)

// Codes documents every code, in order; the README's table is made from it.
var Codes = []struct {
	Code    Code
	Meaning string
}{
	{BadConfig, "bad network configuration (malformed JSON, a relative `log_file`, an unknown `ipam.result` ...)"},
	{BadArgs, "bad environment or arguments (CNI_ARGS, netns path, interface name taken)"},
	{TryAgain, "try again later: etcd or the host's tabby-node unreachable (answered within 5 s)"},
	{Internal, "internal error (a CHECK that finds the interface or record wrong answers this too)"},
	{AddressInUse, "address already in use (names the holder)"},
	{NoPool, "no such pool, or address outside every pool"},
	{PoolExhausted, "pools exhausted"},
	{PoolDisabled, "pool disabled"},
	{NotAffine, "address in another host's block and strict affinity is on"},
	{PolicyNotInForce, "tabby-node answers but cannot put the endpoint's policy in force in time (names the cause, e.g. ip6tables unusable)"},
	{DatastoreFormat, "a record in etcd is not what this version can read (names the key)"},
}

// Error is a failure with its CNI code and a message a person can act on.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// New makes an *Error.
func New(code Code, format string, a ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// CodeOf returns the code err carries, or 0.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Markdown is the README's table of codes.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| code | meaning |\n|---|---|\n")
	for _, c := range Codes {
		fmt.Fprintf(&b, "| %d | %s |\n", c.Code, c.Meaning)
	}
	return b.String()
}
