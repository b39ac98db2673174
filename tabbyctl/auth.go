package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store/etcdauth"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

func authCommands() []*command {
	return []*command{
		{path: []string{"auth", "setup"}, usage: "auth setup [--host H[,H...]] [--docker-host H[,H...]] [--enable]",
			help: "create etcd users and least-privilege roles: tabby-admin, tabby-kube-controllers, tabby-host-H per host (its own endpoints and node record, shared IPAM and indexes), tabby-docker-H; --enable turns etcd auth on (users authenticate by their certificate's CN); run as etcd's root",
			flags: []flagSpec{
				{name: "host", value: true, help: "hosts to make a role and user for, comma separated"},
				{name: "docker-host", value: true, help: "hosts running tabby-docker, comma separated"},
				{name: "enable", help: "turn etcd authentication on (creates user root without a password)"},
			}, run: authSetup},
		{path: []string{"auth", "show"}, usage: "auth show [--host H]", help: "the key ranges tabby's roles grant, as etcd holds them (or, for --host H, as 'auth setup' would make them)",
			flags: []flagSpec{{name: "host", value: true, help: "print the role of this host without asking etcd"}}, run: authShow},
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// wantedRoles are the roles 'auth setup' makes for the flags given.
func wantedRoles(c *ctx) ([]etcdauth.Role, error) {
	roles := []etcdauth.Role{etcdauth.Admin(), etcdauth.KubeControllersRole()}
	for _, h := range splitList(c.flag("host", "")) {
		r, err := etcdauth.Host(h)
		if err != nil {
			return nil, usagef("--host: %v", err)
		}
		roles = append(roles, r)
	}
	for _, h := range splitList(c.flag("docker-host", "")) {
		r, err := etcdauth.Docker(h)
		if err != nil {
			return nil, usagef("--docker-host: %v", err)
		}
		roles = append(roles, r)
	}
	return roles, nil
}

func withClient(c *ctx, fn func(context.Context, *clientv3.Client) error) error {
	kv, err := c.etcd().Open()
	if err != nil {
		return err
	}
	defer kv.Close()
	cx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return fn(cx, kv.Client)
}

type roleOut struct {
	Role   string   `json:"role"`
	User   string   `json:"user,omitempty"`
	Ranges []string `json:"ranges"`
}

func roleRows(roles []roleOut) [][]string {
	var rows [][]string
	for _, r := range roles {
		for i, p := range r.Ranges {
			if i == 0 {
				rows = append(rows, []string{r.Role, orDash(r.User), p})
			} else {
				rows = append(rows, []string{"", "", p})
			}
		}
	}
	return rows
}

func describe(r etcdauth.Role) roleOut {
	o := roleOut{Role: r.Name, User: r.User}
	for _, p := range r.Perms {
		o.Ranges = append(o.Ranges, p.String())
	}
	return o
}

func authSetup(c *ctx) error {
	if len(c.args) != 0 {
		return usagef("no arguments: hosts go in --host")
	}
	roles, err := wantedRoles(c)
	if err != nil {
		return err
	}
	err = withClient(c, func(cx context.Context, cli *clientv3.Client) error {
		if err := etcdauth.Apply(cx, cli, roles...); err != nil {
			return err
		}
		// Hosts may not write the schema record: record it now, so that
		// the first tabby-node need not.
		if _, err := model.EnsureSchema(cx, etcdv3.FromClient(cli, nil)); err != nil {
			return err
		}
		if c.has("enable") {
			return etcdauth.Enable(cx, cli)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("auth setup: %w", err)
	}
	var out []roleOut
	for _, r := range roles {
		out = append(out, describe(r))
	}
	return c.emit(out, []string{"ROLE", "USER (certificate CN)", "RANGES"}, roleRows(out))
}

func authShow(c *ctx) error {
	if h := c.flag("host", ""); h != "" {
		r, err := etcdauth.Host(h)
		if err != nil {
			return usagef("--host: %v", err)
		}
		out := []roleOut{describe(r)}
		return c.emit(out, []string{"ROLE", "USER (certificate CN)", "RANGES"}, roleRows(out))
	}
	var out []roleOut
	err := withClient(c, func(cx context.Context, cli *clientv3.Client) error {
		users, err := cli.UserList(cx)
		if err != nil {
			return err
		}
		holders := map[string][]string{}
		for _, u := range users.Users {
			ur, err := cli.UserGet(cx, u)
			if err != nil {
				return fmt.Errorf("user %s: %w", u, err)
			}
			for _, r := range ur.Roles {
				holders[r] = append(holders[r], u)
			}
		}
		roles, err := cli.RoleList(cx)
		if err != nil {
			return err
		}
		for _, name := range roles.Roles {
			rr, err := cli.RoleGet(cx, name)
			if err != nil {
				return fmt.Errorf("role %s: %w", name, err)
			}
			o := roleOut{Role: name, User: strings.Join(holders[name], ",")}
			for _, p := range rr.Perm {
				o.Ranges = append(o.Ranges, etcdauth.Perm{Key: string(p.Key), End: string(p.RangeEnd),
					Write: p.PermType == clientv3.PermReadWrite}.String())
			}
			if name == "root" {
				o.Ranges = []string{"everything (etcd's superuser)"}
			}
			slices.Sort(o.Ranges)
			out = append(out, o)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("auth show: %w", err)
	}
	return c.emit(out, []string{"ROLE", "USERS (certificate CN)", "RANGES"}, roleRows(out))
}
