package ociimage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Host tools tabby-node runs (iptables and ip6tables in both back ends,
// ipset; iproute2 and conntrack for an operator's debugging in the pod),
// copied from this machine with the libraries they load: conf/Dockerfile
// gets the same from Debian's packages.
var hostTools = []string{
	"/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi",
	"/usr/sbin/ipset", "/usr/sbin/conntrack", "/sbin/ip",
}

// The iptables names Debian links to the two multi-call binaries.
var xtablesNames = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// BuildTabby writes tabby's image as conf/Dockerfile lays it out (the
// plugins and tabbyctl in /opt/tabby/bin, install-cni.sh, tabby-node as
// the entrypoint), from the binaries in binDir, into dir. root is the
// repository root.
func BuildTabby(root, binDir, dir string) (Image, error) {
	img := Image{Name: TabbyName, Tar: filepath.Join(dir, "tabby.tar")}
	rootfs := filepath.Join(dir, "tabby-rootfs")
	if err := addBusybox(rootfs); err != nil {
		return img, err
	}
	bins := []string{"tabby", "tabby-ipam", "tabby-node", "tabbyctl"}
	// The Kubernetes controllers ship in the same image when built.
	if _, err := os.Stat(filepath.Join(binDir, "tabby-kube-controllers")); err == nil {
		bins = append(bins, "tabby-kube-controllers")
	}
	for _, b := range bins {
		if err := copyFile(filepath.Join(binDir, b), filepath.Join(rootfs, "opt/tabby/bin", b), 0o755); err != nil {
			return img, fmt.Errorf("tabby image: %w (make build)", err)
		}
	}
	for _, l := range []string{"tabby-node", "tabbyctl"} {
		if err := symlink("/opt/tabby/bin/"+l, filepath.Join(rootfs, "usr/local/bin", l)); err != nil {
			return img, err
		}
	}
	if err := copyFile(filepath.Join(root, "conf/install-cni.sh"), filepath.Join(rootfs, "opt/tabby/install-cni.sh"), 0o755); err != nil {
		return img, err
	}
	if err := copyFile(filepath.Join(root, "conf/10-tabby.conflist"), filepath.Join(rootfs, "opt/tabby/10-tabby.conflist"), 0o644); err != nil {
		return img, err
	}
	tools := append([]string{}, hostTools...)
	// portmap, which the conflist chains, for nodes that have none.
	tools = append(tools, "/usr/lib/cni/portmap")
	for _, t := range tools {
		dst := filepath.Join(rootfs, t)
		if t == "/usr/lib/cni/portmap" {
			dst = filepath.Join(rootfs, "opt/tabby/cni/portmap")
		}
		if err := copyWithLibs(t, dst, rootfs); err != nil {
			return img, err
		}
	}
	for _, n := range xtablesNames {
		for _, v := range []struct{ suffix, multi string }{{"-nft", "xtables-nft-multi"}, {"-legacy", "xtables-legacy-multi"}} {
			name := strings.Replace(n, "tables", "tables"+v.suffix, 1)
			if err := symlink(v.multi, filepath.Join(rootfs, "usr/sbin", name)); err != nil {
				return img, err
			}
		}
		// Debian's default back end is nft.
		if err := symlink("xtables-nft-multi", filepath.Join(rootfs, "usr/sbin", n)); err != nil {
			return img, err
		}
	}
	// iptables loads its match and target extensions at run time.
	for _, d := range []string{"/usr/lib/x86_64-linux-gnu/xtables"} {
		if err := copyTree(d, filepath.Join(rootfs, d)); err != nil {
			return img, err
		}
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if err := copyLibs(filepath.Join(d, e.Name()), rootfs); err != nil {
				return img, err
			}
		}
	}
	for _, f := range []string{"/etc/protocols", "/etc/services", "/etc/ethertypes"} {
		if _, err := os.Stat(f); err == nil {
			if err := copyFile(f, filepath.Join(rootfs, f), 0o644); err != nil {
				return img, err
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "lib/modules"), 0o755); err != nil {
		return img, err
	}
	env := []string{DefaultPath, "TABBY_STATE_DIR=/var/run/tabby"}
	return img, Write(img.Name, rootfs, img.Tar, []string{"/usr/local/bin/tabby-node"}, nil, env)
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// copyWithLibs copies an executable and the shared libraries it loads.
func copyWithLibs(src, dst, rootfs string) error {
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("tabby image needs %s: %w", src, err)
	}
	if err := copyFile(real, dst, 0o755); err != nil {
		return err
	}
	return copyLibs(real, rootfs)
}

// copyLibs copies the libraries ldd lists for file (with the dynamic
// loader), each at its path and, when that is a symlink, its target too.
func copyLibs(file, rootfs string) error {
	if !dynamic(file) && !strings.HasSuffix(file, ".so") {
		return nil
	}
	out, err := exec.Command("ldd", file).Output()
	if err != nil {
		return nil // not a dynamic object after all
	}
	for _, m := range lddLine.FindAllStringSubmatch(string(out), -1) {
		lib := m[1]
		for _, p := range []string{lib} {
			dst := filepath.Join(rootfs, p)
			if _, err := os.Lstat(dst); err == nil {
				continue
			}
			real, err := filepath.EvalSymlinks(p)
			if err != nil {
				return err
			}
			if err := copyFile(real, filepath.Join(rootfs, real), 0o755); err != nil {
				return err
			}
			if real != p {
				if err := symlink(real, dst); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// copyTree copies a directory of regular files and symlinks.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		d := filepath.Join(dst, rel)
		switch {
		case info.IsDir():
			return os.MkdirAll(d, 0o755)
		case info.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return symlink(l, d)
		default:
			return copyFile(p, d, info.Mode().Perm())
		}
	})
}

func symlink(target, link string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	_ = os.Remove(link)
	return os.Symlink(target, link)
}
