// Package etcdauth is tabby's least-privilege layout for etcd's own
// authentication: which users exist, which roles they hold and which key
// ranges each role may read or write. With etcd's --client-cert-auth a TLS
// client is the user its certificate's common name names, so the plugins
// and tabby-node of a host authenticate by the host's certificate alone (no
// password on disk, nothing in a log).
//
// etcd permissions are [key, rangeEnd) ranges, so what a role can be
// narrowed to follows from the key layout: a host's own subtree and its
// node record are its alone; the IPAM keys and the two indexes (tag and
// member, keyed by tag and by namespace first) are written by every host and
// stay shared (docs/security.md says why and what would narrow them).
package etcdauth

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/pkg/model"
)

// Users and roles. A host's user and role carry the host's name; the
// certificate of the host's plugins and tabby-node has that user as its CN.
const (
	HostUserPrefix  = "tabby-host-"
	AdminUser       = "tabby-admin"
	KubeControllers = "tabby-kube-controllers"
	DockerPrefix    = "tabby-docker-"
	// RootUser is etcd's own superuser, which must exist before etcd lets
	// authentication be enabled; it manages users and roles.
	RootUser = "root"
)

// Perm is one key range a role may read, or read and write.
type Perm struct {
	Key   string // first key
	End   string // first key past the range; "" means the one key Key
	Write bool   // read and write; else read only
}

// Prefix is the range of every key under p.
func Prefix(p string, write bool) Perm {
	return Perm{Key: p, End: clientv3.GetPrefixRangeEnd(p), Write: write}
}

// Key is the range of exactly one key.
func Key(k string, write bool) Perm { return Perm{Key: k, Write: write} }

// Covers says whether the range holds key.
func (p Perm) Covers(key string) bool {
	if p.End == "" {
		return key == p.Key
	}
	return key >= p.Key && key < p.End
}

func (p Perm) String() string {
	mode := "read"
	if p.Write {
		mode = "readwrite"
	}
	if p.End == "" {
		return fmt.Sprintf("%s %s", mode, p.Key)
	}
	if p.End == clientv3.GetPrefixRangeEnd(p.Key) {
		return fmt.Sprintf("%s %s*", mode, p.Key)
	}
	return fmt.Sprintf("%s [%s, %s)", mode, p.Key, p.End)
}

// Role is an etcd role with its ranges, and the user that holds it (one
// user per role: a certificate's CN names the user).
type Role struct {
	Name  string
	User  string
	Perms []Perm
	Why   string // one line for 'tabbyctl auth show'
}

// Writable says whether the role may write key.
func (r Role) Writable(key string) bool {
	return slices.ContainsFunc(r.Perms, func(p Perm) bool { return p.Write && p.Covers(key) })
}

var hostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$`)

// CheckHost refuses a host name that could widen a role's range: every
// range of a host role ends in "<host>/", so a name with a slash (or empty)
// would cover other hosts' keys.
func CheckHost(host string) error {
	if !hostName.MatchString(host) {
		return fmt.Errorf("host name %q: want letters, digits, '.', '_' or '-' (at most 253), starting and ending with a letter or digit", host)
	}
	return nil
}

// readAll lets a role read every tabby key: nodes read pools, profiles,
// policies, the indexes and BGP settings, and none of it is secret.
var readAll = Prefix(model.Prefix, false)

// Host is the role of host's CNI plugins and tabby-node (user
// tabby-host-<host>): its own endpoints and node record, plus the keys IPAM
// and the indexes must write from any host. No write on pools, profiles,
// policies, BGP settings or other hosts' endpoints and node records.
func Host(host string) (Role, error) {
	if err := CheckHost(host); err != nil {
		return Role{}, err
	}
	return Role{
		Name: HostUserPrefix + host, User: HostUserPrefix + host,
		Why: "CNI plugins and tabby-node of host " + host,
		Perms: []Perm{
			readAll,
			Prefix(model.HostWorkloadPrefix(host), true), // its endpoints (not host/<h>/bgppeer/: tabbyctl's)
			Key(model.NodeKey(host), true),               // its host record (tabby-node)
			// Shared: a host claims free blocks, borrows from another host's
			// block, and the release that empties a borrowed block deletes the
			// block and its owner's affinity; handles are keyed by network.
			Prefix(model.BlockPrefix, true),
			Prefix(model.AffinityPrefix, true),
			Prefix(model.HandlePrefix, true),
			// Shared: keyed by tag, and by namespace, before the host.
			Prefix(model.TagPrefix, true),
			Prefix(model.MemberPrefix, true),
		},
	}, nil
}

// Admin is tabbyctl's role: every tabby key.
func Admin() Role {
	return Role{Name: AdminUser, User: AdminUser, Why: "tabbyctl: every tabby key",
		Perms: []Perm{Prefix(model.Prefix, true)}}
}

// KubeControllersRole is tabby-kube-controllers': namespace profiles (only
// the k8s_ns. ones), namespace and pod records, policies, and endpoint
// labels with their member and tag entries on every host; and, to remove
// the host of a deleted Node, host records and IPAM.
func KubeControllersRole() Role {
	return Role{Name: KubeControllers, User: KubeControllers, Why: "tabby-kube-controllers",
		Perms: []Perm{
			readAll,
			Prefix(model.ProfileKey(model.K8sNamespaceProfilePrefix), true),
			Prefix(model.NamespacePrefix, true),
			Prefix(model.K8sPodPrefix, true),
			Prefix(model.PolicyPrefix, true),
			Prefix(model.HostPrefix, true),
			Prefix(model.MemberPrefix, true),
			Prefix(model.TagPrefix, true),
			Prefix(model.NodePrefix, true),
			Prefix(model.BlockPrefix, true),
			Prefix(model.AffinityPrefix, true),
			Prefix(model.HandlePrefix, true),
		}}
}

// Docker is the role of tabby-docker on host (user tabby-docker-<host>):
// it runs the CNI-equivalent work of its host, and a Docker network create
// makes a pool and a profile, so it also writes those and its bookkeeping.
func Docker(host string) (Role, error) {
	h, err := Host(host)
	if err != nil {
		return Role{}, err
	}
	h.Name, h.User, h.Why = DockerPrefix+host, DockerPrefix+host, "tabby-docker of host "+host+": its host's role plus pools and profiles"
	h.Perms = append(h.Perms,
		Prefix(model.PoolPrefix, true),
		Prefix(model.ProfilePrefix, true),
		Prefix(model.Prefix+"docker/network/"+host+"/", true), // its Docker networks
		Prefix(model.Prefix+"docker/pool/", true),             // shared: who made which pool
		Prefix(model.Prefix+"docker/profile/", true))
	return h, nil
}

// Apply creates or updates each role and its user: the role gets exactly
// its ranges (ranges it had and no longer needs are revoked), the user is
// created without a password (it authenticates by its certificate's CN)
// and granted the role. It is idempotent. The client must be root (or auth
// still off).
func Apply(ctx context.Context, cli *clientv3.Client, roles ...Role) error {
	for _, r := range roles {
		if err := applyRole(ctx, cli, r); err != nil {
			return fmt.Errorf("role %s: %w", r.Name, err)
		}
		if err := addUser(ctx, cli, r.User); err != nil {
			return fmt.Errorf("user %s: %w", r.User, err)
		}
		if _, err := cli.UserGrantRole(ctx, r.User, r.Name); err != nil {
			return fmt.Errorf("grant role %s to user %s: %w", r.Name, r.User, err)
		}
	}
	return nil
}

func applyRole(ctx context.Context, cli *clientv3.Client, r Role) error {
	if _, err := cli.RoleAdd(ctx, r.Name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return err
	}
	cur, err := cli.RoleGet(ctx, r.Name)
	if err != nil {
		return err
	}
	want := map[[2]string]bool{}
	for _, p := range r.Perms {
		want[[2]string{p.Key, p.End}] = true
	}
	for _, p := range cur.Perm {
		if !want[[2]string{string(p.Key), string(p.RangeEnd)}] {
			if _, err := cli.RoleRevokePermission(ctx, r.Name, string(p.Key), string(p.RangeEnd)); err != nil {
				return fmt.Errorf("revoke %s: %w", p.Key, err)
			}
		}
	}
	for _, p := range r.Perms {
		t := clientv3.PermissionType(clientv3.PermRead)
		if p.Write {
			t = clientv3.PermissionType(clientv3.PermReadWrite)
		}
		if _, err := cli.RoleGrantPermission(ctx, r.Name, p.Key, p.End, t); err != nil {
			return fmt.Errorf("grant %s: %w", p, err)
		}
	}
	return nil
}

func addUser(ctx context.Context, cli *clientv3.Client, name string) error {
	_, err := cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return err
	}
	return nil
}

// Enable turns etcd's authentication on. etcd wants a root user holding
// the root role first; it is made without a password, so only a client
// certificate with CN root can act as it.
func Enable(ctx context.Context, cli *clientv3.Client) error {
	if err := addUser(ctx, cli, RootUser); err != nil {
		return fmt.Errorf("user root: %w", err)
	}
	if _, err := cli.UserGrantRole(ctx, RootUser, "root"); err != nil {
		return fmt.Errorf("grant root role: %w", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable auth: %w", err)
	}
	return nil
}

// IsPermissionDenied says whether err is etcd refusing an operation to the
// user (as clientv3 or the plugins' gRPC client report it).
func IsPermissionDenied(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrPermissionDenied) || strings.Contains(err.Error(), "permission denied"))
}
