// Package client talks to a running Sluice server's API for the CLI: it
// sends JSON, decodes JSON, and turns the API's error body back into an
// errs.Error.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
)

// Client is an API client.
type Client struct {
	BaseURL string
	Key     string
	HTTP    *http.Client
}

// New returns a client for the server at baseURL using key.
func New(baseURL, key string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Key: key, HTTP: &http.Client{Timeout: 60 * time.Second}}
}

// Do sends a request with an optional JSON body and decodes the JSON
// response into out (when out is not nil). API errors come back as
// *errs.Error with the server's code, message and field.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	var raw []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		raw = b
	}
	return c.DoRaw(ctx, method, path, query, "application/json", raw, out)
}

// DoRaw is Do with a body sent as is.
func (c *Client) DoRaw(ctx context.Context, method, path string, query url.Values, contentType string, body []byte, out any) error {
	req, err := c.request(ctx, method, path, query, contentType, body)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return &errs.Error{Code: errs.Unavailable, Message: fmt.Sprintf("cannot reach %s", c.BaseURL), Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode >= 400 {
		return apiError(resp.StatusCode, data)
	}
	if out == nil || len(data) == 0 {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], data...)
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("the server's answer to %s %s is not the JSON expected (%v)", method, path, err)
	}
	return nil
}

// Stream sends a request with a body sent as is and returns the answer's
// body to be read as it arrives (a run's events); the caller closes it.
// API errors come back as from Do.
func (c *Client) Stream(ctx context.Context, method, path string, query url.Values, contentType string, body []byte) (io.ReadCloser, error) {
	req, err := c.request(ctx, method, path, query, contentType, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, &errs.Error{Code: errs.Unavailable, Message: fmt.Sprintf("cannot reach %s", c.BaseURL), Err: err}
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, apiError(resp.StatusCode, data)
	}
	return resp.Body, nil
}

func (c *Client) request(ctx context.Context, method, path string, query url.Values, contentType string, body []byte) (*http.Request, error) {
	u := c.BaseURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	return req, nil
}

// apiError turns the API's error body back into an *errs.Error with the
// server's code, message and field.
func apiError(status int, data []byte) error {
	var eb struct {
		Error struct {
			Code      string `json:"code"`
			Message   string `json:"message"`
			Field     string `json:"field"`
			RequestID string `json:"request_id"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
		return errs.E(errs.Internal, "HTTP %d from server: %s", status, bytes.TrimSpace(data))
	}
	msg := eb.Error.Message
	if eb.Error.RequestID != "" {
		msg += " [request " + eb.Error.RequestID + "]"
	}
	return &errs.Error{Code: errs.Code(eb.Error.Code), Message: msg, Field: eb.Error.Field}
}
