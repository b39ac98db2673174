package testutil

import (
	"context"
	"testing"

	"github.com/tabby-net/tabby/pkg/store"
)

// Keys lists the keys under prefix, failing the test on an error.
func Keys(t testing.TB, kv store.KV, prefix string) []string {
	t.Helper()
	kvs, _, err := kv.List(context.Background(), prefix, true)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range kvs {
		out = append(out, r.Key)
	}
	return out
}
