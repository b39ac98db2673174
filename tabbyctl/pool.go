package main

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func poolCommands() []*command {
	return []*command{
		{path: []string{"pool", "add"}, usage: "pool add CIDR [--ipip[=always|cross-subnet|never]] [--vxlan[=always|cross-subnet|never]] [--nat-outgoing] [--block-size N] [--disabled]",
			help: "create or update an address pool",
			flags: []flagSpec{{name: "ipip", value: true, optional: true}, {name: "vxlan", value: true, optional: true},
				{name: "nat-outgoing"}, {name: "block-size", value: true}, {name: "disabled"}},
			run: withKV(poolAdd)},
		{path: []string{"pool", "remove"}, usage: "pool remove CIDR", help: "remove a pool that holds no allocation", run: withKV(func(cx context.Context, kv store.KV, c *ctx) error {
			if err := needArgs(c, 1, "one CIDR"); err != nil {
				return err
			}
			if err := ipam.RemovePool(cx, kv, c.args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "pool %s removed\n", c.args[0])
			return nil
		})},
		{path: []string{"pool", "show"}, usage: "pool show", help: "list pools", run: withKV(poolShow)},
	}
}

func encapFlag(c *ctx, name string) (model.EncapMode, error) {
	v, ok := c.flags[name]
	if !ok {
		return model.EncapNever, nil
	}
	if v == "" {
		return model.EncapAlways, nil
	}
	m := model.EncapMode(v)
	if !m.Valid() {
		return "", usagef("--%s=%s: use always, cross-subnet or never", name, v)
	}
	return m, nil
}

func poolAdd(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 1, "one CIDR, e.g. 10.0.0.0/16"); err != nil {
		return err
	}
	p := model.Pool{CIDR: c.args[0], NATOutgoing: c.has("nat-outgoing"), Disabled: c.has("disabled")}
	var err error
	if p.IPIPMode, err = encapFlag(c, "ipip"); err != nil {
		return err
	}
	if p.VXLANMode, err = encapFlag(c, "vxlan"); err != nil {
		return err
	}
	if bs := c.flag("block-size", ""); bs != "" {
		if p.BlockSize, err = strconv.Atoi(bs); err != nil {
			return usagef("--block-size %q is not a number", bs)
		}
	}
	out, err := ipam.AddPool(cx, kv, p)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "pool %s added (block /%d, ipip %s, vxlan %s, nat-outgoing %v, disabled %v)\n",
		out.CIDR, out.BlockSize, out.IPIPMode, out.VXLANMode, out.NATOutgoing, out.Disabled)
	return nil
}

func poolShow(cx context.Context, kv store.KV, c *ctx) error {
	pools, err := ipam.Pools(cx, kv)
	if err != nil {
		return err
	}
	sort.Slice(pools, func(i, j int) bool { return pools[i].CIDR < pools[j].CIDR })
	var rows [][]string
	for _, p := range pools {
		rows = append(rows, []string{p.CIDR, "/" + strconv.Itoa(p.BlockSize), string(p.IPIPMode), string(p.VXLANMode),
			strconv.FormatBool(p.NATOutgoing), strconv.FormatBool(p.Disabled)})
	}
	return c.emit(pools, []string{"CIDR", "BLOCK", "IPIP", "VXLAN", "NAT-OUTGOING", "DISABLED"}, rows)
}

func ipamCommands() []*command {
	return []*command{
		{path: []string{"ipam", "show"}, usage: "ipam show [--ip IP]", help: "blocks and their use, or who holds one address",
			flags: []flagSpec{{name: "ip", value: true}}, run: withKV(ipamShow)},
		{path: []string{"ipam", "check"}, usage: "ipam check [--rate N] [--state-dir DIR [--host NAME] [--grace D]]", help: "find leaked and orphaned addresses; with --state-dir also what runs on this host and etcd does not know, or knows and nothing runs (exit 1 when any)",
			flags: append([]flagSpec{{name: "rate", value: true, help: fmt.Sprintf("keys read per second, so that the check does not slow others' requests (default %d; 0: as fast as etcd answers)", ipam.DefaultCheckRate)}}, hostFlags...),
			run:   withKV(ipamCheck)},
		ipamRepairCommand(),
		{path: []string{"ipam", "release"}, usage: "ipam release --ip IP | --block CIDR", help: "free one address whatever holds it, or return an empty block (a gone host's kept one) to its pool",
			flags: []flagSpec{{name: "ip", value: true}, {name: "block", value: true}}, run: withKV(func(cx context.Context, kv store.KV, c *ctx) error {
				if blk := c.flag("block", ""); blk != "" {
					if c.flag("ip", "") != "" {
						return usagef("give --ip or --block, not both")
					}
					if err := ipam.ReleaseBlock(cx, kv, blk); err != nil {
						return codeErr(err)
					}
					fmt.Fprintf(c.out, "released block %s\n", blk)
					return nil
				}
				ip := net.ParseIP(c.flag("ip", ""))
				if ip == nil {
					return usagef("--ip needs an IP address (or --block a block's CIDR)")
				}
				if err := ipam.ReleaseIP(cx, kv, ip); err != nil {
					return codeErr(err)
				}
				fmt.Fprintf(c.out, "released %s\n", ip)
				return nil
			})},
	}
}

func ipamShow(cx context.Context, kv store.KV, c *ctx) error {
	if s := c.flag("ip", ""); s != "" {
		ip := net.ParseIP(s)
		if ip == nil {
			return usagef("--ip %q is not an IP address", s)
		}
		al, b, err := ipam.Lookup(cx, kv, ip)
		if err != nil {
			return codeErr(err)
		}
		if al == nil {
			out := map[string]any{"ip": ip.String(), "allocated": false}
			return c.emit(out, []string{"IP", "STATUS"}, [][]string{{ip.String(), "free"}})
		}
		out := map[string]any{"ip": ip.String(), "allocated": true, "handle": al.Handle, "host": al.Host, "workload": al.Workload, "block": b.CIDR, "blockAffinity": b.Affinity}
		return c.emit(out, []string{"IP", "HANDLE", "HOST", "WORKLOAD", "BLOCK", "BLOCK-HOST"},
			[][]string{{ip.String(), al.Handle, al.Host, al.Workload, b.CIDR, b.Affinity}})
	}
	blocks, err := store.ListJSON[model.Block](cx, kv, model.BlockPrefix)
	if err != nil {
		return err
	}
	type row struct {
		Block    string `json:"block"`
		Pool     string `json:"pool"`
		Host     string `json:"host"`
		Used     int    `json:"used"`
		Size     int    `json:"size"`
		Borrowed int    `json:"borrowed"`
	}
	var out []row
	var rows [][]string
	for _, b := range blocks {
		r := row{Block: b.CIDR, Pool: b.Pool, Host: b.Affinity, Size: len(b.Allocations)}
		for _, a := range b.Allocations {
			if a != nil {
				r.Used++
				if a.Host != b.Affinity {
					r.Borrowed++
				}
			}
		}
		out = append(out, r)
		rows = append(rows, []string{r.Block, r.Pool, r.Host, fmt.Sprintf("%d/%d", r.Used, r.Size), strconv.Itoa(r.Borrowed)})
	}
	return c.emit(out, []string{"BLOCK", "POOL", "HOST", "USED", "BORROWED-BY-OTHERS"}, rows)
}

func ipamCheck(cx context.Context, kv store.KV, c *ctx) error {
	rate, err := strconv.ParseFloat(c.flag("rate", strconv.Itoa(ipam.DefaultCheckRate)), 64)
	if err != nil || rate < 0 {
		return usagef("--rate %q: want keys per second, 0 for no limit", c.flag("rate", ""))
	}
	rep, err := ipam.CheckPaced(cx, kv, ipam.CheckOptions{Rate: rate})
	if err != nil {
		return err
	}
	if c.has("state-dir") || c.has("host") || c.has("grace") {
		ps, err := hostProblems(cx, kv, c)
		if err != nil {
			return err
		}
		rep.Problems = append(rep.Problems, ps...)
	}
	var rows [][]string
	for _, p := range rep.Problems {
		rows = append(rows, []string{p.Kind, p.IP, p.Handle, p.Host, p.Detail})
	}
	if c.format == "table" {
		fmt.Fprintf(c.out, "%d blocks, %d allocations, %d handles, %d endpoints: %d problems\n",
			rep.Blocks, rep.Allocations, rep.Handles, rep.Endpoints, len(rep.Problems))
		if len(rows) == 0 {
			return nil
		}
	}
	if err := c.emit(rep, []string{"PROBLEM", "IP", "HANDLE", "HOST", "DETAIL"}, rows); err != nil {
		return err
	}
	if len(rep.Problems) > 0 {
		return fmt.Errorf("%d problems found", len(rep.Problems))
	}
	return nil
}
