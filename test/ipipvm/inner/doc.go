// Package inner holds the IPIP lab tests that test/ipipvm runs inside a
// qemu VM booted with a kernel that has ipip. They skip everywhere else
// (unless TABBY_IN_IPIP_VM=1), so `go test ./...` on a machine without
// IPIP only compiles them.
//
// Inside the VM they need root, iproute2, iptables, ipset and busybox
// (ping), and TABBY_BIN / TABBY_BIN_DIR pointing at static builds of
// tabby, tabby-ipam, tabby-node, tabbyctl and etcd-lab (there is no Go
// toolchain in the VM to build them).
package inner
