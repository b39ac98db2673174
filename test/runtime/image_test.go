package runtime

import (
	"encoding/json"
	"testing"

	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/ociimage"
)

// Images of the runtime tests, built here (there is no registry) by
// test/ociimage: each tarball is both an OCI layout (for `ctr images
// import`) and a docker-archive (for `docker load`).
const (
	pauseImage   = ociimage.PauseName
	busyboxImage = ociimage.BusyboxName
)

type images struct{ pause, busybox string }

// buildImages writes both image tarballs into dir.
func buildImages(t *testing.T, dir string) images {
	t.Helper()
	testutil.Tool(t, "busybox", "/bin/busybox", "/usr/bin/busybox")
	p, err := ociimage.BuildPause(testutil.Root(), dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ociimage.BuildBusybox(dir)
	if err != nil {
		t.Fatal(err)
	}
	return images{pause: p.Tar, busybox: b.Tar}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
