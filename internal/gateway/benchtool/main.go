// Command benchtool is the gateway benchmark's helper (scripts/bench-gateway):
// a zero-latency OpenAI chat upstream, a bare httputil.ReverseProxy, and a
// load generator that measures them and Sluice side by side in one run.
// Each runs as its own process so that each server's CPU time can be read
// from /proc/<pid>/stat on its own.
//
//	benchtool upstream -addr-file F              answer every POST with one chat.completion
//	benchtool proxy -target URL -addr-file F     relay to URL through httputil.ReverseProxy
//	benchtool load -target NAME,URL,PID …        latency at 1 connection, throughput at 32
//	benchtool port                               print a free loopback port
//
// It is a benchmark tool, not part of Sluice: nothing imports it, and the
// in-process benchmarks (internal/gateway/bench_test.go) stand on their own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: benchtool upstream|proxy|load|port [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "upstream":
		err = upstream(args[1:])
	case "proxy":
		err = proxy(args[1:])
	case "load":
		err = load(args[1:])
	case "port":
		err = freePort()
	default:
		err = fmt.Errorf("unknown command %q (upstream, proxy, load, port)", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtool:", err)
		return 1
	}
	return 0
}

// completion is the upstream's answer: a real chat.completion as OpenAI
// sends it, with usage, so that Sluice settles reported tokens.
const completion = `{"id":"chatcmpl-bench0001","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini-2024-07-18",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null},` +
	`"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":9,"total_tokens":23,` +
	`"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}`

// upstream answers every request at once: it reads the body (as a real
// server must) and writes completion.
func upstream(args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	addrFile := fs.String("addr-file", "", "write the bound address here once listening")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body := []byte(completion)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	return serve(*addr, *addrFile, h)
}

// proxy is the bare reverse proxy: the least any Go gateway does.
func proxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	addrFile := fs.String("addr-file", "", "write the bound address here once listening")
	target := fs.String("target", "", "upstream base URL (http://127.0.0.1:PORT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*target)
	if err != nil || u.Host == "" {
		return fmt.Errorf("-target %q is not a URL", *target)
	}
	return serve(*addr, *addrFile, newProxy(u))
}

// newProxy is httputil.ReverseProxy to target with the same upstream
// connection pool as Sluice's providers (internal/llm), so that the two
// differ in what they do per request, not in how they reuse connections.
func newProxy(target *url.URL) *httputil.ReverseProxy {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	return &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: t,
	}
}

// serve serves h on addr until SIGINT or SIGTERM.
func serve(addr, addrFile string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if addrFile != "" {
		// Written whole, then renamed, so a reader never sees half of it.
		tmp := addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(ln.Addr().String()+"\n"), 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, addrFile); err != nil {
			return err
		}
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// freePort prints a loopback port free at this moment, for a server that
// cannot report the port it bound.
func freePort() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	return nil
}
