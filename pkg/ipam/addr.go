package ipam

import (
	"math/big"
	"net"
)

// Address arithmetic on blocks: ordinal <-> IP within a CIDR.

func ipToInt(ip net.IP) *big.Int {
	if v4 := ip.To4(); v4 != nil {
		return new(big.Int).SetBytes(v4)
	}
	return new(big.Int).SetBytes(ip.To16())
}

func intToIP(i *big.Int, v6 bool) net.IP {
	b := i.Bytes()
	n := 4
	if v6 {
		n = 16
	}
	out := make(net.IP, n)
	copy(out[n-len(b):], b)
	return out
}

// nthIP is the ordinal-th address of n.
func nthIP(n *net.IPNet, ordinal int) net.IP {
	v6 := n.IP.To4() == nil
	i := ipToInt(n.IP)
	i.Add(i, big.NewInt(int64(ordinal)))
	return intToIP(i, v6)
}

// ordinalOf is the index of ip in n, or -1.
func ordinalOf(n *net.IPNet, ip net.IP) int {
	if !n.Contains(ip) {
		return -1
	}
	d := new(big.Int).Sub(ipToInt(ip), ipToInt(n.IP))
	return int(d.Int64())
}

// blockOf returns the block of size prefix that holds ip.
func blockOf(ip net.IP, prefix int) *net.IPNet {
	bits := 32
	if ip.To4() == nil {
		bits = 128
	} else {
		ip = ip.To4()
	}
	m := net.CIDRMask(prefix, bits)
	return &net.IPNet{IP: ip.Mask(m), Mask: m}
}

// nthBlock is the index-th block of size prefix inside pool.
func nthBlock(pool *net.IPNet, prefix, index int) *net.IPNet {
	ones, bits := pool.Mask.Size()
	_ = ones
	step := new(big.Int).Lsh(big.NewInt(1), uint(bits-prefix))
	i := ipToInt(pool.IP)
	i.Add(i, new(big.Int).Mul(step, big.NewInt(int64(index))))
	return &net.IPNet{IP: intToIP(i, bits == 128), Mask: net.CIDRMask(prefix, bits)}
}

// numBlocks is how many blocks of size prefix a pool holds (capped, since a
// /64 pool of /122 blocks has more than any host will ever claim).
func numBlocks(pool *net.IPNet, prefix int) int {
	ones, _ := pool.Mask.Size()
	if prefix-ones >= 24 {
		return 1 << 24
	}
	return 1 << (prefix - ones)
}

func blockLen(prefix int, v6 bool) int {
	bits := 32
	if v6 {
		bits = 128
	}
	return 1 << (bits - prefix)
}

// lastIP is the highest address of n.
func lastIP(n *net.IPNet) net.IP {
	out := make(net.IP, len(n.IP))
	for i := range n.IP {
		out[i] = n.IP[i] | ^n.Mask[i]
	}
	return out
}
