package ociimage

import (
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Image names.
const (
	PauseName   = "localhost/tabby-pause:lab"
	BusyboxName = "localhost/tabby-busybox:lab"
	// TabbyName is what conf/k8s/tabby.yaml's image tabby-net/tabby:dev
	// means to a runtime.
	TabbyName = "docker.io/tabby-net/tabby:dev"
)

// BuildPause writes the pause image (test/ociimage/pause, built static)
// into dir. root is the repository root.
func BuildPause(root, dir string) (Image, error) {
	img := Image{Name: PauseName, Tar: filepath.Join(dir, "pause.tar")}
	rootfs := filepath.Join(dir, "pause-rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return img, err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(rootfs, "pause"), "./test/ociimage/pause")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return img, fmt.Errorf("build pause: %w\n%s", err, b)
	}
	return img, Write(img.Name, rootfs, img.Tar, []string{"/pause"}, nil, nil)
}

// BuildBusybox writes a busybox image (busybox-static with its applets in
// /bin) into dir.
func BuildBusybox(dir string) (Image, error) {
	img := Image{Name: BusyboxName, Tar: filepath.Join(dir, "busybox.tar")}
	rootfs := filepath.Join(dir, "busybox-rootfs")
	if err := addBusybox(rootfs); err != nil {
		return img, err
	}
	return img, Write(img.Name, rootfs, img.Tar, nil, []string{"/bin/sh"}, nil)
}

// BuildFromBinary writes image name holding one static binary at
// /<its base name>, with busybox beside it (a shell and the usual tools in
// /bin, as the upstream test images have) and this machine's tools (each
// with the libraries it loads, at its own path, ahead of busybox's in
// PATH: the upstream suite runs curl and a netcat with -u in its probe
// pods, which busybox lacks).
func BuildFromBinary(name, binary, dir string, entrypoint []string, tools ...string) (Image, error) {
	base := filepath.Base(binary)
	img := Image{Name: name, Tar: filepath.Join(dir, base+".tar")}
	rootfs := filepath.Join(dir, base+"-rootfs")
	if err := addBusybox(rootfs); err != nil {
		return img, err
	}
	if err := copyFile(binary, filepath.Join(rootfs, base), 0o755); err != nil {
		return img, err
	}
	for _, t := range tools {
		src, dst := t, t
		if s, d, ok := strings.Cut(t, "="); ok {
			src, dst = s, d
		}
		if err := copyWithLibs(src, filepath.Join(rootfs, dst), rootfs); err != nil {
			return img, err
		}
	}
	return img, Write(name, rootfs, img.Tar, entrypoint, nil, nil)
}

// skeleton makes the directories every image has.
func skeleton(rootfs string) error {
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev", "run", "var", "root"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(rootfs, "tmp"), 0o1777|fs.ModeSticky); err != nil {
		return err
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "var", "run")); err != nil {
		if err := os.Symlink("../run", filepath.Join(rootfs, "var", "run")); err != nil {
			return err
		}
	}
	for name, body := range map[string]string{"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n"} {
		if err := os.WriteFile(filepath.Join(rootfs, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// addBusybox puts busybox-static and its applets into rootfs/bin, never
// over a file already there.
func addBusybox(rootfs string) error {
	if err := skeleton(rootfs); err != nil {
		return err
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox not found (make deps installs busybox-static): %w", err)
	}
	if dynamic(bb) {
		return fmt.Errorf("%s is dynamically linked; images need busybox-static (make deps installs it)", bb)
	}
	if err := copyFile(bb, filepath.Join(rootfs, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(list)) {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		p := filepath.Join(rootfs, "bin", a)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.Symlink("busybox", p); err != nil {
			return err
		}
	}
	return nil
}

func dynamic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	// Replace, never write through, what is there (a busybox applet link).
	if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(dst, b, mode)
}
