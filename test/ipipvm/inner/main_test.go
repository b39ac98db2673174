package inner

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	if os.Getenv(InVMEnv) == "1" {
		if err := localBinaries(); err != nil {
			fmt.Fprintf(os.Stderr, "inner: %v\n", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// localBinaries copies the binaries from the host share into the VM's
// tmpfs and points TABBY_BIN and TABBY_BIN_DIR there. The share is 9p with
// cache=none: every exec from it reads the whole binary over virtio again
// (tabbyctl: 1.3-1.9 s a run from the share, 0.1-0.3 s from tmpfs), and
// the tests run tabbyctl and the plugins dozens of times.
func localBinaries() error {
	src := os.Getenv("TABBY_BIN")
	if src == "" || !strings.HasPrefix(src, "/mnt/host") {
		return nil
	}
	dst, err := os.MkdirTemp("", "tabby-bin-")
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	if os.Getenv("TABBY_BIN_DIR") == src {
		os.Setenv("TABBY_BIN_DIR", dst)
	}
	return os.Setenv("TABBY_BIN", dst)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
