package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// HTTPKV talks to etcd's v3 JSON gateway (/v3/kv/*) with net/http: the
// plugins' client before GRPCKV, kept as the alternative make bench
// measures it against.
type HTTPKV struct{ httpBase }

// NewHTTP returns a gateway client. It does not connect until the first call.
func NewHTTP(cfg Config) (*HTTPKV, error) {
	b, err := newHTTPBase(cfg, false)
	if err != nil {
		return nil, err
	}
	return &HTTPKV{b}, nil
}

// httpBase is what the two net/http clients share: the endpoints in order,
// one transport (HTTP/1.1 for the gateway, HTTP/2 for gRPC) and the
// deadline of a call.
type httpBase struct {
	endpoints []string
	client    *http.Client
	timeout   time.Duration
}

func newHTTPBase(cfg Config, h2 bool) (httpBase, error) {
	if len(cfg.Endpoints) == 0 {
		return httpBase{}, fmt.Errorf("no etcd endpoints configured")
	}
	tlsCfg, err := TLSConfig(cfg)
	if err != nil {
		return httpBase{}, err
	}
	eps, err := endpointURLs(cfg.Endpoints)
	if err != nil {
		return httpBase{}, err
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 2 * time.Second,
		MaxIdleConnsPerHost: 4,
		DisableCompression:  true,
	}
	if h2 {
		// gRPC is HTTP/2 only: cleartext endpoints get HTTP/2 with prior
		// knowledge (what etcd's cmux expects), TLS ones negotiate h2.
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
		tr.Protocols.SetHTTP2(true)
	}
	t := cfg.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	return httpBase{endpoints: eps, client: &http.Client{Transport: tr}, timeout: t}, nil
}

// Wire types of the gateway. int64 travels as a JSON string, bytes as base64.
type gwKV struct {
	Key            []byte `json:"key"`
	Value          []byte `json:"value"`
	CreateRevision gwInt  `json:"create_revision"`
	ModRevision    gwInt  `json:"mod_revision"`
}

type gwHeader struct {
	Revision gwInt `json:"revision"`
}

type gwRangeReq struct {
	Key      []byte `json:"key"`
	RangeEnd []byte `json:"range_end,omitempty"`
	Limit    int64  `json:"limit,omitempty"`
	Revision int64  `json:"revision,omitempty"`
	KeysOnly bool   `json:"keys_only,omitempty"`
}

type gwRangeResp struct {
	Header gwHeader `json:"header"`
	Kvs    []gwKV   `json:"kvs"`
	More   bool     `json:"more"`
	Count  gwInt    `json:"count"`
}

type gwCompare struct {
	Result      string `json:"result"`
	Target      string `json:"target"`
	Key         []byte `json:"key"`
	ModRevision string `json:"mod_revision"`
}

type gwPut struct {
	Key   []byte `json:"key"`
	Value []byte `json:"value"`
}

type gwDelete struct {
	Key      []byte `json:"key"`
	RangeEnd []byte `json:"range_end,omitempty"`
}

type gwRequestOp struct {
	Range  *gwRangeReq `json:"request_range,omitempty"`
	Put    *gwPut      `json:"request_put,omitempty"`
	Delete *gwDelete   `json:"request_delete_range,omitempty"`
}

type gwTxnReq struct {
	Compare []gwCompare   `json:"compare,omitempty"`
	Success []gwRequestOp `json:"success,omitempty"`
}

type gwResponseOp struct {
	Range *gwRangeResp `json:"response_range"`
}

type gwTxnResp struct {
	Header    gwHeader       `json:"header"`
	Succeeded bool           `json:"succeeded"`
	Responses []gwResponseOp `json:"responses"`
}

type gwError struct {
	Message string `json:"message"`
	Error   string `json:"error"`
	Code    int    `json:"code"`
}

// gwInt accepts int64 as a JSON string (protojson) or number.
type gwInt int64

func (g *gwInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*g = 0
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	*g = gwInt(n)
	return err
}

// PrefixEnd is the etcd range end that covers every key starting with prefix.
func PrefixEnd(prefix string) []byte {
	end := []byte(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

func (h *HTTPKV) call(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	var lastErr error
	for _, ep := range h.endpoints {
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, ep+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		r.Header.Set("Content-Type", "application/json")
		res, err := h.client.Do(r)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		data, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			lastErr = err
			continue
		}
		if res.StatusCode != http.StatusOK {
			var ge gwError
			_ = json.Unmarshal(data, &ge)
			msg := ge.Message
			if msg == "" {
				msg = ge.Error
			}
			if msg == "" {
				msg = strings.TrimSpace(string(data))
			}
			// 503 and "no leader" are transient cluster states, not a bad request.
			if res.StatusCode >= 500 {
				lastErr = fmt.Errorf("etcd %s: %s", res.Status, msg)
				continue
			}
			return fmt.Errorf("etcd %s%s: %s", ep, path, msg)
		}
		return json.Unmarshal(data, resp)
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return &UnavailableError{Endpoints: h.endpoints, Err: lastErr}
}

func toKVs(in []gwKV) []KeyValue {
	out := make([]KeyValue, len(in))
	for i, k := range in {
		out[i] = KeyValue{Key: string(k.Key), Value: k.Value, ModRev: int64(k.ModRevision), CreateRev: int64(k.CreateRevision)}
	}
	return out
}

// Get implements KV.
func (h *HTTPKV) Get(ctx context.Context, key string) (*KeyValue, error) {
	var resp gwRangeResp
	if err := h.call(ctx, "/v3/kv/range", gwRangeReq{Key: []byte(key)}, &resp); err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	kv := toKVs(resp.Kvs)[0]
	return &kv, nil
}

// List implements KV.
func (h *HTTPKV) List(ctx context.Context, prefix string, keysOnly bool) ([]KeyValue, int64, error) {
	var resp gwRangeResp
	req := gwRangeReq{Key: []byte(prefix), RangeEnd: PrefixEnd(prefix), KeysOnly: keysOnly}
	if err := h.call(ctx, "/v3/kv/range", req, &resp); err != nil {
		return nil, 0, err
	}
	return toKVs(resp.Kvs), int64(resp.Header.Revision), nil
}

// ListPage implements KV.
func (h *HTTPKV) ListPage(ctx context.Context, prefix string, opt PageOptions) (*Page, error) {
	start, end, limit, err := PageRange(prefix, opt)
	if err != nil {
		return nil, err
	}
	var resp gwRangeResp
	req := gwRangeReq{Key: []byte(start), RangeEnd: end, Limit: limit, Revision: opt.Rev, KeysOnly: opt.KeysOnly}
	if err := h.call(ctx, "/v3/kv/range", req, &resp); err != nil {
		return nil, err
	}
	return NewPage(toKVs(resp.Kvs), int64(resp.Header.Revision), resp.More, int64(resp.Count), opt), nil
}

// Txn implements KV.
func (h *HTTPKV) Txn(ctx context.Context, cmps []Cmp, ops []Op) (*TxnResult, error) {
	req := gwTxnReq{}
	for _, c := range cmps {
		req.Compare = append(req.Compare, gwCompare{Result: "EQUAL", Target: "MOD", Key: []byte(c.Key), ModRevision: strconv.FormatInt(c.ModRev, 10)})
	}
	nGets := 0
	for _, o := range ops {
		switch o.Kind {
		case OpPut:
			req.Success = append(req.Success, gwRequestOp{Put: &gwPut{Key: []byte(o.Key), Value: o.Value}})
		case OpDelete:
			d := &gwDelete{Key: []byte(o.Key)}
			if o.Prefix {
				d.RangeEnd = PrefixEnd(o.Key)
			}
			req.Success = append(req.Success, gwRequestOp{Delete: d})
		case OpGet:
			g := &gwRangeReq{Key: []byte(o.Key)}
			if o.Prefix {
				g.RangeEnd = PrefixEnd(o.Key)
			}
			req.Success = append(req.Success, gwRequestOp{Range: g})
			nGets++
		default:
			return nil, errors.New("unknown op")
		}
	}
	var resp gwTxnResp
	if err := h.call(ctx, "/v3/kv/txn", req, &resp); err != nil {
		return nil, err
	}
	out := &TxnResult{Succeeded: resp.Succeeded, Revision: int64(resp.Header.Revision)}
	if resp.Succeeded {
		for i, o := range ops {
			if o.Kind != OpGet {
				continue
			}
			var kvs []KeyValue
			if i < len(resp.Responses) && resp.Responses[i].Range != nil {
				kvs = toKVs(resp.Responses[i].Range.Kvs)
			}
			out.Gets = append(out.Gets, kvs)
		}
	}
	return out, nil
}

// Close implements KV.
func (h *httpBase) Close() error {
	h.client.CloseIdleConnections()
	return nil
}
