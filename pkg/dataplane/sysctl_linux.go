package dataplane

import (
	"fmt"
	"os"
	"strings"
)

// /proc/sys/net resolves to the network namespace of the calling thread, so
// these act on whichever namespace the caller is in. Writing procfs directly
// costs a few microseconds; exec'ing sysctl(8) would cost milliseconds.

func writeSysctl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", path, err)
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, value, werr)
	}
	if cerr != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, value, cerr)
	}
	return nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ensureSysctl writes value only when it differs. Used for namespace-wide
// switches, so that an ADD changes host-global state only the first time.
func ensureSysctl(path, value string) error {
	cur, err := readSysctl(path)
	if err != nil {
		return err
	}
	if cur == value {
		return nil
	}
	return writeSysctl(path, value)
}
