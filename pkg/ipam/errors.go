package ipam

import (
	"errors"
	"fmt"
)

// Error codes tabby returns above the CNI range (100+); the CNI plugins pass
// them through as the error object's code.
const (
	CodeAddressInUse    = 101
	CodeNoPool          = 102
	CodePoolExhausted   = 103
	CodePoolDisabled    = 104
	CodeNotAffine       = 105
	CodePolicyTimeout   = 110
	CodeDatastoreFormat = 120
)

// Error is an IPAM failure a person can act on.
type Error struct {
	Code int
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func errf(code int, format string, a ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// CodeOf returns the tabby code of err, or 0.
func CodeOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
