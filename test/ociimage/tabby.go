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
// gets the same from Debian's packages. conntrack is optional: nothing of
// tabby's needs it.
var (
	hostTools     = []string{"/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi", "/usr/sbin/ipset", "/sbin/ip"}
	optionalTools = []string{"/usr/sbin/conntrack"}
)

// The iptables names tabby-node runs (node/iptables): the image has them
// even where this machine's alternatives lack one.
var xtablesNames = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// xtablesLinks is every iptables name of the image and the multi-call
// binary it links to: the names above in their plain, -nft and -legacy
// forms, and whatever else this machine links to a multi-call binary
// (-translate, xtables-monitor). Plain names go to nft whatever this
// machine's alternatives say, as on a fresh Debian: tabby-node picks the
// back end the host's rules are in by the explicit names.
func xtablesLinks() map[string]string {
	const nft, legacy = "xtables-nft-multi", "xtables-legacy-multi"
	links := map[string]string{}
	for _, n := range xtablesNames {
		links[n] = nft
		links[strings.Replace(n, "tables", "tables-nft", 1)] = nft
		links[strings.Replace(n, "tables", "tables-legacy", 1)] = legacy
	}
	ents, _ := os.ReadDir("/usr/sbin")
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "iptables") && !strings.HasPrefix(n, "ip6tables") && !strings.HasPrefix(n, "xtables-") {
			continue
		}
		real, err := filepath.EvalSymlinks(filepath.Join("/usr/sbin", n))
		if err != nil || real == filepath.Join("/usr/sbin", n) {
			continue // a multi-call binary itself, or a script (iptables-apply)
		}
		switch filepath.Base(real) {
		case nft, legacy:
			links[n] = nft
			if strings.Contains(n, "-legacy") {
				links[n] = legacy
			}
		}
	}
	return links
}

// BuildTabby writes tabby's image as conf/Dockerfile lays it out (the
// plugins and tabbyctl in /opt/tabby/bin, install-cni.sh, portmap,
// tabby-node as the entrypoint), from the binaries in binDir, into dir.
// Where the Dockerfile installs Debian packages, this copies the same
// programs from this machine with their libraries (iptables in both back
// ends, ipset, ip, conntrack, dash as /bin/sh); busybox supplies the rest
// of the tools. root is the repository root.
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
	for _, t := range optionalTools {
		if _, err := os.Stat(t); err == nil {
			tools = append(tools, t)
		}
	}
	for _, t := range tools {
		if err := copyWithLibs(t, filepath.Join(rootfs, t), rootfs); err != nil {
			return img, err
		}
	}
	// portmap, which the conflist chains, for nodes that have none.
	if err := copyWithLibs("/usr/lib/cni/portmap", filepath.Join(rootfs, "opt/tabby/cni/portmap"), rootfs); err != nil {
		return img, fmt.Errorf("%w (make deps installs containernetworking-plugins)", err)
	}
	links := xtablesLinks()
	for n, multi := range links {
		if err := symlink(multi, filepath.Join(rootfs, "usr/sbin", n)); err != nil {
			return img, err
		}
	}
	// busybox's own ip (and any other applet named like a real tool) would
	// answer for /bin/ip: point those at the real one.
	real := map[string]string{}
	for _, t := range tools {
		real[filepath.Base(t)] = t
	}
	for n := range links {
		real[n] = "/usr/sbin/" + n
	}
	if err := unshadow(rootfs, real); err != nil {
		return img, err
	}
	// /bin/sh is dash, as in conf/Dockerfile's Debian image: busybox's sh
	// runs its own applet for any name it has one of (`ip` in the
	// probes, an operator's shell), whatever PATH says.
	if err := copyWithLibs("/bin/dash", filepath.Join(rootfs, "bin/dash"), rootfs); err != nil {
		return img, err
	}
	if err := symlink("dash", filepath.Join(rootfs, "bin/sh")); err != nil {
		return img, err
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
	// ip's names for tables, protocols and scopes (`ip route show table
	// main`).
	if _, err := os.Stat("/etc/iproute2"); err == nil {
		if err := copyTree("/etc/iproute2", filepath.Join(rootfs, "etc/iproute2")); err != nil {
			return img, err
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

// unshadow points each busybox applet link in rootfs/bin that has a real
// tool's name (real: name -> the tool's path in the image) at the tool.
func unshadow(rootfs string, real map[string]string) error {
	for name, path := range real {
		p := filepath.Join(rootfs, "bin", name)
		if l, err := os.Readlink(p); err != nil || l != "busybox" || path == "/bin/"+name {
			continue
		}
		if err := symlink(path, p); err != nil {
			return err
		}
	}
	return nil
}

func symlink(target, link string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	_ = os.Remove(link)
	return os.Symlink(target, link)
}
