package store

import "testing"

// The gRPC client decodes etcd's answers by hand: whatever bytes arrive, it
// returns an error or a result, never panics.
func FuzzDecodeTxn(f *testing.F) {
	// A real answer: header{revision 7}, succeeded, one range with a key.
	kv := pbBytes(pbVarint(pbBytes(nil, 1, []byte("/k")), 3, 5), 5, []byte("v"))
	rr := pbBytes(pbBytes(nil, 1, pbVarint(nil, 3, 7)), 2, kv)
	f.Add(pbBytes(pbVarint(pbBytes(nil, 1, pbVarint(nil, 3, 7)), 2, 1), 3, pbBytes(nil, 1, rr)))
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeTxn(b); err == nil && r == nil {
			t.Fatal("nil result without an error")
		}
		if r, err := decodeRange(b); err == nil && r == nil {
			t.Fatal("nil range without an error")
		}
	})
}

func TestDecodeTxnRoundTrip(t *testing.T) {
	kv := pbBytes(pbVarint(pbVarint(pbBytes(nil, 1, []byte("/k")), 2, 4), 3, 5), 5, []byte("v"))
	rr := pbBytes(pbBytes(nil, 1, pbVarint(nil, 3, 7)), 2, kv)
	r, err := decodeTxn(pbBytes(pbVarint(pbBytes(nil, 1, pbVarint(nil, 3, 7)), 2, 1), 3, pbBytes(nil, 1, rr)))
	if err != nil || !r.succeeded || r.revision != 7 || len(r.responses) != 1 {
		t.Fatalf("%+v %v", r, err)
	}
	got := r.responses[0].kvs
	if len(got) != 1 || got[0].Key != "/k" || string(got[0].Value) != "v" || got[0].ModRev != 5 || got[0].CreateRev != 4 {
		t.Fatalf("%+v", got)
	}
}
