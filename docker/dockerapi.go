package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// dockerAPI is the one Docker Engine API call tabby-docker makes: a
// network's name (the driver protocol passes only its ID), for the profile
// named after the network. A plain HTTP GET; no Docker client library.
type dockerAPI struct {
	client *http.Client
	base   string
}

func newDockerAPI(host string) (*dockerAPI, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
		return &dockerAPI{client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, base: "http://docker"}, nil
	case "tcp", "http":
		return &dockerAPI{client: &http.Client{Timeout: 5 * time.Second}, base: "http://" + u.Host}, nil
	}
	return nil, fmt.Errorf("%q: want unix:///path or tcp://host:port", host)
}

// NetworkName returns the name of network id.
func (a *dockerAPI) NetworkName(ctx context.Context, id string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/networks/"+url.PathEscape(id), nil)
	if err != nil {
		return "", err
	}
	res, err := a.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("Docker API: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		return "", fmt.Errorf("Docker API: network %s: %w", id, errNoSuchNetwork)
	}
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return "", fmt.Errorf("Docker API: network %s: %s %s", id, res.Status, strings.TrimSpace(string(b)))
	}
	var n struct{ Name string }
	if err := json.NewDecoder(res.Body).Decode(&n); err != nil {
		return "", fmt.Errorf("Docker API: decode network %s: %w", id, err)
	}
	if n.Name == "" {
		return "", fmt.Errorf("Docker API: network %s has no name", id)
	}
	return n.Name, nil
}
