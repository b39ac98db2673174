// Package ociimage writes container images without a registry or a
// builder: a root filesystem becomes one layer, and the tarball is both an
// OCI layout (index.json, for `ctr images import`) and a docker-archive
// (manifest.json, for `docker load`). The test labs build their images
// here: pause and busybox for the runtimes, tabby's own image (what
// conf/Dockerfile builds, from this machine's binaries) and single-binary
// images such as agnhost for the cluster lab.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Image is a written image: its name and its tarball.
type Image struct {
	Name string
	Tar  string
}

// DefaultPath is the PATH of images that set none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

var unixZero = time.Unix(0, 0)

// Write writes image name with one layer, rootfs, to out.
func Write(name, rootfs, out string, entrypoint, cmd, env []string) error {
	lt, err := layerTar(rootfs)
	if err != nil {
		return fmt.Errorf("layer of %s: %w", name, err)
	}
	if env == nil {
		env = []string{DefaultPath}
	}
	layer := newBlob(lt)
	created := "1970-01-01T00:00:00Z"
	config := newBlob(mustJSON(map[string]any{
		"architecture": "amd64", "os": "linux", "created": created,
		"config":  map[string]any{"Entrypoint": entrypoint, "Cmd": cmd, "Env": env, "WorkingDir": "/"},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layer.digest}},
		"history": []map[string]string{{"created": created, "created_by": "tabby test/ociimage"}},
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
