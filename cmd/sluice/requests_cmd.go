package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/internal/client"
)

// requestFlags are the flags of `sluice requests`, by verb.
var requestFlags = map[string][]string{
	"create":  {"scope", "dimension", "amount", "duration", "reason"},
	"list":    {"status", "tenant_id", "user_id", "scope", "limit", "after"},
	"approve": {"amount", "duration", "expires_at", "note"},
	"deny":    {"reason"},
}

// requestsCmd asks for more quota and decides such asks:
//
//	sluice requests create --dimension tokens_day --amount 50000 --duration 72h --reason "…" [--scope S]
//	sluice requests list [--status pending] [--tenant-id T] [--user-id U] [--scope S]
//	sluice requests get ID
//	sluice requests approve ID [--amount N] [--duration D | --expires-at T] [--note "…"]
//	sluice requests deny ID --reason "…"
//	sluice requests cancel ID
func requestsCmd(ctx context.Context, c *client.Client, stdout io.Writer, args []string, flags map[string]string) error {
	const path = "/api/v1/quota-requests"
	if len(args) == 0 {
		return usageError("requests needs a verb (create, list, get ID, approve ID, deny ID, cancel ID)")
	}
	verb, rest := args[0], args[1:]
	allowed, known := requestFlags[verb]
	if !known && verb != "get" && verb != "cancel" {
		return usageError(fmt.Sprintf("unknown verb %q for requests (create, list, get, approve, deny, cancel)", verb))
	}
	for k := range flags {
		if !contains(allowed, k) {
			if len(allowed) == 0 {
				return usageError(fmt.Sprintf("requests %s takes no flags (got --%s)", verb, k))
			}
			return usageError(fmt.Sprintf("requests %s: unknown flag --%s (flags: --%s)", verb, k,
				strings.ReplaceAll(strings.Join(allowed, ", --"), "_", "-")))
		}
	}
	needsID := verb != "create" && verb != "list"
	if needsID != (len(rest) == 1) || len(rest) > 1 {
		if needsID {
			return usageError(fmt.Sprintf("requests %s needs exactly one request id", verb))
		}
		return usageError(fmt.Sprintf("requests %s takes no arguments but flags", verb))
	}
	body := map[string]any{}
	for k, v := range flags {
		if k != "amount" {
			body[k] = v
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return usageError(fmt.Sprintf("requests %s: --amount must be a number, not %q", verb, v))
		}
		body[k] = n
	}
	switch verb {
	case "create":
		return show(ctx, c, stdout, http.MethodPost, path, nil, body)
	case "list":
		q := url.Values{}
		for k, v := range flags {
			q.Set(k, v)
		}
		return show(ctx, c, stdout, http.MethodGet, path, q, nil)
	}
	one := path + "/" + url.PathEscape(rest[0])
	switch verb {
	case "get":
		return show(ctx, c, stdout, http.MethodGet, one, nil, nil)
	case "cancel":
		return show(ctx, c, stdout, http.MethodPost, one+"/cancel", nil, nil)
	case "deny":
		if flags["reason"] == "" {
			return usageError("requests deny needs --reason: the requester sees it")
		}
	}
	return show(ctx, c, stdout, http.MethodPost, one+"/"+verb, nil, body)
}
