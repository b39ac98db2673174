package runtime

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
)

// Images of the runtime tests, built here (there is no registry): each
// tarball is both an OCI layout (index.json, for `ctr images import`) and
// a docker-archive (manifest.json, for `docker load`).
const (
	pauseImage   = "localhost/tabby-pause:lab"
	busyboxImage = "localhost/tabby-busybox:lab"
)

type images struct{ pause, busybox string }

var unixZero = time.Unix(0, 0)

// buildImages writes both image tarballs into dir.
func buildImages(t *testing.T, dir string) images {
	t.Helper()
	bb := requireTool(t, "busybox", "/bin/busybox", "/usr/bin/busybox")
	if f, err := elf.Open(bb); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				f.Close()
				t.Fatalf("%s is dynamically linked; the busybox image needs busybox-static (make deps installs it)", bb)
			}
		}
		f.Close()
	}
	out := images{pause: filepath.Join(dir, "pause.tar"), busybox: filepath.Join(dir, "busybox.tar")}

	pr := filepath.Join(dir, "pause-rootfs")
	if err := os.MkdirAll(pr, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(pr, "pause"), "./test/runtime/pause")
	cmd.Dir = testutil.Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, b)
	}
	if err := mkImage(pauseImage, pr, out.pause, []string{"/pause"}, nil); err != nil {
		t.Fatal(err)
	}

	br := filepath.Join(dir, "busybox-rootfs")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(br, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(br, "tmp"), 0o1777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(bb, filepath.Join(br, "bin", "busybox")); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, a := range strings.Fields(string(list)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			if err := os.Symlink("busybox", filepath.Join(br, "bin", a)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, body := range map[string]string{"etc/passwd": "root:x:0:0:root:/:/bin/sh\n", "etc/group": "root:x:0:\n"} {
		if err := os.WriteFile(filepath.Join(br, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := mkImage(busyboxImage, br, out.busybox, nil, []string{"/bin/sh"}); err != nil {
		t.Fatal(err)
	}
	return out
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// layerTar is rootfs as a reproducible tar (sorted, mtime 0, owner root).
func layerTar(rootfs string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == rootfs {
			return err
		}
		rel, _ := filepath.Rel(rootfs, p)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = rel
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = unixZero, unixZero, unixZero
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type blob struct {
	digest string
	data   []byte
}

func newBlob(b []byte) blob {
	s := sha256.Sum256(b)
	return blob{digest: "sha256:" + hex.EncodeToString(s[:]), data: b}
}

func (b blob) path() string { return "blobs/sha256/" + strings.TrimPrefix(b.digest, "sha256:") }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// mkImage writes image name (one layer: rootfs) to out.
func mkImage(name, rootfs, out string, entrypoint, cmd []string) error {
	lt, err := layerTar(rootfs)
	if err != nil {
		return fmt.Errorf("layer of %s: %w", name, err)
	}
	layer := newBlob(lt)
	created := "1970-01-01T00:00:00Z"
	config := newBlob(mustJSON(map[string]any{
		"architecture": "amd64", "os": "linux", "created": created,
		"config":  map[string]any{"Entrypoint": entrypoint, "Cmd": cmd, "Env": []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}, "WorkingDir": "/"},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layer.digest}},
		"history": []map[string]string{{"created": created, "created_by": "tabby test/runtime"}},
	}))
	manifest := newBlob(mustJSON(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": len(config.data)},
		"layers": []map[string]any{{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest, "size": len(layer.data)}},
	}))
	tag := name[strings.LastIndex(name, ":")+1:]
	index := mustJSON(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest.digest, "size": len(manifest.data),
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
		}},
	})
	dockerManifest := mustJSON([]map[string]any{{"Config": config.path(), "RepoTags": []string{name}, "Layers": []string{layer.path()}}})

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"manifest.json", dockerManifest},
		{"blobs/", nil}, {"blobs/sha256/", nil},
		{layer.path(), layer.data}, {config.path(), config.data}, {manifest.path(), manifest.data},
	}
	for _, fl := range files {
		hdr := &tar.Header{Name: fl.name, Mode: 0o644, Size: int64(len(fl.data)), ModTime: unixZero, Typeflag: tar.TypeReg}
		if strings.HasSuffix(fl.name, "/") {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(fl.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}
