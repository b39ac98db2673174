package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// GRPCKV speaks etcd's gRPC KV API (Range and Txn) with nothing but the
// standard library: HTTP/2 from net/http (cleartext with prior knowledge for
// http://, ALPN h2 for https://) and the few protobuf messages it needs
// encoded by hand. It is the CNI plugins' client: it starts as fast as the
// JSON gateway client (no gRPC or protobuf runtime to initialise, nothing
// the binary did not already link), while etcd serves each call directly
// instead of translating JSON and re-dialling itself, which costs etcd about
// half the CPU per call and the ADD a round trip's worth of latency
// (make bench measures both side by side).
type GRPCKV struct{ httpBase }

// NewGRPC returns a gRPC client. It does not connect until the first call.
func NewGRPC(cfg Config) (*GRPCKV, error) {
	b, err := newHTTPBase(cfg, true)
	if err != nil {
		return nil, err
	}
	return &GRPCKV{b}, nil
}

func endpointURLs(in []string) ([]string, error) {
	eps := make([]string, len(in))
	for i, e := range in {
		e = strings.TrimRight(strings.TrimSpace(e), "/")
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			return nil, fmt.Errorf("etcd endpoint %q must start with http:// or https://", e)
		}
		eps[i] = e
	}
	return eps, nil
}

// grpcStatusError is a gRPC status other than OK.
type grpcStatusError struct {
	code int
	msg  string
}

func (e *grpcStatusError) Error() string {
	if e.code == 7 { // PERMISSION_DENIED: say who is refused, not only that
		return fmt.Sprintf("etcd: %s: the user its client certificate's CN names has no role that may do this (grpc status 7)", e.msg)
	}
	return fmt.Sprintf("etcd: %s (grpc status %d)", e.msg, e.code)
}

// transient: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and
// ABORTED are cluster states worth another endpoint; anything else is an
// answer.
func (e *grpcStatusError) transient() bool {
	switch e.code {
	case 4, 8, 10, 14:
		return true
	}
	return false
}

// call runs one unary RPC on the first endpoint that answers.
func (g *GRPCKV) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	frame := make([]byte, 5+len(req))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(req)))
	copy(frame[5:], req)
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	var lastErr error
	for _, ep := range g.endpoints {
		out, err := g.callOne(ctx, ep+"/etcdserverpb.KV/"+method, frame)
		if err == nil {
			return out, nil
		}
		var se *grpcStatusError
		if errors.As(err, &se) && !se.transient() {
			return nil, err
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return nil, &UnavailableError{Endpoints: g.endpoints, Err: lastErr}
}

func (g *GRPCKV) callOne(ctx context.Context, url string, frame []byte) ([]byte, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(frame))
	if err != nil {
		return nil, err
	}
	r.Header.Set("Content-Type", "application/grpc")
	r.Header.Set("TE", "trailers")
	if dl, ok := ctx.Deadline(); ok {
		r.Header.Set("Grpc-Timeout", strconv.FormatInt(max(1, time.Until(dl).Milliseconds()), 10)+"m")
	}
	res, err := g.client.Do(r)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, &grpcStatusError{code: 14, msg: "HTTP " + res.Status}
	}
	// A status arrives in the trailers, or in the headers of a
	// "trailers-only" answer.
	st, msg := res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message")
	if st == "" {
		st, msg = res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
	}
	if st != "" && st != "0" {
		code, _ := strconv.Atoi(st)
		return nil, &grpcStatusError{code: code, msg: msg}
	}
	if len(body) < 5 {
		return nil, errors.New("etcd: short gRPC answer")
	}
	if body[0] != 0 {
		return nil, errors.New("etcd: compressed gRPC answer")
	}
	n := binary.BigEndian.Uint32(body[1:5])
	if int(n) > len(body)-5 {
		return nil, errors.New("etcd: truncated gRPC answer")
	}
	return body[5 : 5+n], nil
}

// Get implements KV.
func (g *GRPCKV) Get(ctx context.Context, key string) (*KeyValue, error) {
	out, err := g.call(ctx, "Range", pbRange(key, nil, false))
	if err != nil {
		return nil, err
	}
	rr, err := decodeRange(out)
	if err != nil {
		return nil, err
	}
	if len(rr.kvs) == 0 {
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	return &rr.kvs[0], nil
}

// List implements KV.
func (g *GRPCKV) List(ctx context.Context, prefix string, keysOnly bool) ([]KeyValue, int64, error) {
	out, err := g.call(ctx, "Range", pbRange(prefix, PrefixEnd(prefix), keysOnly))
	if err != nil {
		return nil, 0, err
	}
	rr, err := decodeRange(out)
	if err != nil {
		return nil, 0, err
	}
	return rr.kvs, rr.revision, nil
}

// ListPage implements KV.
func (g *GRPCKV) ListPage(ctx context.Context, prefix string, opt PageOptions) (*Page, error) {
	start, end, limit, err := PageRange(prefix, opt)
	if err != nil {
		return nil, err
	}
	req := pbRange(start, end, opt.KeysOnly)
	req = pbVarint(req, 3, uint64(limit))
	req = pbVarint(req, 4, uint64(opt.Rev))
	out, err := g.call(ctx, "Range", req)
	if err != nil {
		return nil, err
	}
	rr, err := decodeRange(out)
	if err != nil {
		return nil, err
	}
	return NewPage(rr.kvs, rr.revision, rr.more, rr.count, opt), nil
}

// Txn implements KV.
func (g *GRPCKV) Txn(ctx context.Context, cmps []Cmp, ops []Op) (*TxnResult, error) {
	var req []byte
	for _, c := range cmps {
		var m []byte
		m = pbVarint(m, 2, 2) // target MOD (result EQUAL is the zero value)
		m = pbBytes(m, 3, []byte(c.Key))
		m = pbVarintAlways(m, 6, uint64(c.ModRev)) // oneof: 0 must be sent
		req = pbBytes(req, 1, m)
	}
	for _, o := range ops {
		var op []byte
		switch o.Kind {
		case OpGet:
			var end []byte
			if o.Prefix {
				end = PrefixEnd(o.Key)
			}
			op = pbBytes(nil, 1, pbRange(o.Key, end, false))
		case OpPut:
			m := pbBytes(nil, 1, []byte(o.Key))
			m = pbBytesAlways(m, 2, o.Value)
			op = pbBytes(nil, 2, m)
		case OpDelete:
			m := pbBytes(nil, 1, []byte(o.Key))
			if o.Prefix {
				m = pbBytes(m, 2, PrefixEnd(o.Key))
			}
			op = pbBytes(nil, 3, m)
		default:
			return nil, errors.New("unknown op")
		}
		req = pbBytes(req, 2, op)
	}
	out, err := g.call(ctx, "Txn", req)
	if err != nil {
		return nil, err
	}
	tr, err := decodeTxn(out)
	if err != nil {
		return nil, err
	}
	res := &TxnResult{Succeeded: tr.succeeded, Revision: tr.revision}
	if tr.succeeded {
		i := 0
		for _, o := range ops {
			if o.Kind != OpGet {
				i++
				continue
			}
			var kvs []KeyValue
			if i < len(tr.responses) && tr.responses[i] != nil {
				kvs = tr.responses[i].kvs
			}
			res.Gets = append(res.Gets, kvs)
			i++
		}
	}
	return res, nil
}

// The protobuf wire format, for the handful of etcd messages used here
// (field numbers from etcd's api/etcdserverpb/rpc.proto and
// api/mvccpb/kv.proto).

func pbTag(b []byte, field, wire int) []byte { return binary.AppendUvarint(b, uint64(field<<3|wire)) }

func pbVarint(b []byte, field int, v uint64) []byte {
	if v == 0 {
		return b
	}
	return pbVarintAlways(b, field, v)
}

func pbVarintAlways(b []byte, field int, v uint64) []byte {
	return binary.AppendUvarint(pbTag(b, field, 0), v)
}

func pbBytes(b []byte, field int, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	return pbBytesAlways(b, field, v)
}

func pbBytesAlways(b []byte, field int, v []byte) []byte {
	b = binary.AppendUvarint(pbTag(b, field, 2), uint64(len(v)))
	return append(b, v...)
}

// pbRange is a RangeRequest: key 1, range_end 2, keys_only 8 (limit 3 and
// revision 4 are appended by ListPage).
func pbRange(key string, end []byte, keysOnly bool) []byte {
	m := pbBytes(nil, 1, []byte(key))
	m = pbBytes(m, 2, end)
	if keysOnly {
		m = pbVarint(m, 8, 1)
	}
	return m
}

// pbFields walks one message, calling f with each field's number, wire
// type, varint value or bytes.
func pbFields(b []byte, f func(field, wire int, v uint64, data []byte) error) error {
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return errors.New("etcd: bad protobuf tag")
		}
		b = b[n:]
		field, wire := int(tag>>3), int(tag&7)
		switch wire {
		case 0:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return errors.New("etcd: bad protobuf varint")
			}
			b = b[n:]
			if err := f(field, wire, v, nil); err != nil {
				return err
			}
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return errors.New("etcd: bad protobuf length")
			}
			data := b[n : n+int(l)]
			b = b[n+int(l):]
			if err := f(field, wire, 0, data); err != nil {
				return err
			}
		case 1:
			if len(b) < 8 {
				return errors.New("etcd: short protobuf fixed64")
			}
			b = b[8:]
		case 5:
			if len(b) < 4 {
				return errors.New("etcd: short protobuf fixed32")
			}
			b = b[4:]
		default:
			return fmt.Errorf("etcd: protobuf wire type %d", wire)
		}
	}
	return nil
}

// headerRevision reads ResponseHeader.revision (3).
func headerRevision(b []byte) (int64, error) {
	var rev int64
	err := pbFields(b, func(field, _ int, v uint64, _ []byte) error {
		if field == 3 {
			rev = int64(v)
		}
		return nil
	})
	return rev, err
}

// decodeKV reads mvccpb.KeyValue: key 1, create_revision 2, mod_revision 3,
// value 5.
func decodeKV(b []byte) (KeyValue, error) {
	var kv KeyValue
	err := pbFields(b, func(field, _ int, v uint64, data []byte) error {
		switch field {
		case 1:
			kv.Key = string(data)
		case 2:
			kv.CreateRev = int64(v)
		case 3:
			kv.ModRev = int64(v)
		case 5:
			kv.Value = append([]byte(nil), data...)
		}
		return nil
	})
	return kv, err
}

type rangeResp struct {
	revision int64
	kvs      []KeyValue
	more     bool
	count    int64
}

// decodeRange reads a RangeResponse: header 1, kvs 2, more 3.
func decodeRange(b []byte) (*rangeResp, error) {
	r := &rangeResp{}
	err := pbFields(b, func(field, _ int, v uint64, data []byte) error {
		switch field {
		case 1:
			rev, err := headerRevision(data)
			r.revision = rev
			return err
		case 2:
			kv, err := decodeKV(data)
			r.kvs = append(r.kvs, kv)
			return err
		case 3:
			r.more = v != 0
		case 4:
			r.count = int64(v)
		}
		return nil
	})
	return r, err
}

type txnResp struct {
	revision  int64
	succeeded bool
	responses []*rangeResp // per ResponseOp; nil where it is not a range
}

// decodeTxn reads a TxnResponse: header 1, succeeded 2, responses 3 (each a
// ResponseOp whose response_range is 1).
func decodeTxn(b []byte) (*txnResp, error) {
	t := &txnResp{}
	err := pbFields(b, func(field, _ int, v uint64, data []byte) error {
		switch field {
		case 1:
			rev, err := headerRevision(data)
			t.revision = rev
			return err
		case 2:
			t.succeeded = v != 0
		case 3:
			var rr *rangeResp
			err := pbFields(data, func(f, _ int, _ uint64, d []byte) error {
				if f != 1 {
					return nil
				}
				var err error
				rr, err = decodeRange(d)
				return err
			})
			t.responses = append(t.responses, rr)
			return err
		}
		return nil
	})
	return t, err
}
