package policydoc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"time"

	"github.com/sluicehq/sluice/internal/tenancy"
)

// WatchFile applies the policy file at path now and again whenever its
// content changes (checked every interval; a Kubernetes ConfigMap mount
// swaps a symlink, so the content is what is compared, not the mtime). An
// invalid file is rejected with a logged error and the last good policy
// stays in force. It runs as Sluice itself and returns when ctx ends.
func (a *Applier) WatchFile(ctx context.Context, path string, interval time.Duration, log *slog.Logger) {
	ctx = tenancy.WithPrincipal(ctx, tenancy.SystemPrincipal)
	var last [sha256.Size]byte
	applied := false
	check := func() {
		data, err := os.ReadFile(path)
		if err != nil {
			log.Error("policy file unreadable; the last good policy stays in force", slog.String("file", path), slog.String("error", err.Error()))
			return
		}
		sum := sha256.Sum256(data)
		if applied && bytes.Equal(sum[:], last[:]) {
			return
		}
		last, applied = sum, true
		doc, err := Parse(data)
		if err != nil {
			log.Error("policy file rejected; the last good policy stays in force", slog.String("file", path), slog.String("error", err.Error()))
			return
		}
		changes, err := a.Apply(ctx, doc, false)
		if err != nil {
			log.Error("policy file applied only in part", slog.String("file", path), slog.Int("changes", len(changes)), slog.String("error", err.Error()))
			return
		}
		log.Info("policy file applied", slog.String("file", path), slog.Int("changes", len(changes)))
	}
	check()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			check()
		}
	}
}
