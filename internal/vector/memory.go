package vector

import (
	"context"
	"sync"
)

// Memory is a Store in this process's memory, bounded by its Limits: what
// a run ingests lasts until the server stops.
type Memory struct {
	limits Limits
	mu     sync.RWMutex
	// projects maps tenant and project to their collections.
	projects map[[2]string]map[string]*memCollection
}

type memCollection struct {
	model string
	dims  int
	docs  []Doc
	seen  map[string]bool // content hashes
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty store with limits (zero fields: defaults).
func NewMemory(l Limits) *Memory {
	return &Memory{limits: l.WithDefaults(), projects: map[[2]string]map[string]*memCollection{}}
}

func (m *Memory) info(c *memCollection) Info {
	if c == nil {
		return Info{}
	}
	return Info{Model: c.model, Dimensions: c.dims, Count: len(c.docs)}
}

// Add implements Store.
func (m *Memory) Add(ctx context.Context, k Key, model string, docs []Doc, opt AddOptions) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pk := [2]string{k.TenantID, k.ProjectID}
	colls := m.projects[pk]
	c := colls[k.Collection]
	info := m.info(c)
	if opt.Replace {
		info = Info{}
	}
	var seen map[string]bool
	if c != nil && !opt.Replace {
		seen = c.seen
	}
	keep := make([]Doc, 0, len(docs))
	hashes := make([]string, 0, len(docs))
	batch := map[string]bool{}
	for _, d := range docs {
		h := d.Hash()
		if opt.SkipDuplicates && (seen[h] || batch[h]) {
			continue
		}
		batch[h] = true
		keep = append(keep, d)
		hashes = append(hashes, h)
	}
	if err := Check(m.limits, k, info, model, keep, len(keep)); err != nil {
		return 0, err
	}
	if len(keep) == 0 && !opt.Replace {
		return 0, nil
	}
	if c == nil {
		if len(colls) >= m.limits.MaxCollections {
			return 0, FullProject(m.limits, k)
		}
		if colls == nil {
			colls = map[string]*memCollection{}
			m.projects[pk] = colls
		}
		c = &memCollection{}
		colls[k.Collection] = c
	}
	if opt.Replace {
		c.docs, c.seen = nil, nil
	}
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	if len(keep) > 0 {
		c.model, c.dims = model, len(keep[0].Vector)
	}
	for i, d := range keep {
		d.Vector = append([]float32(nil), d.Vector...)
		c.docs = append(c.docs, d)
		c.seen[hashes[i]] = true
	}
	return len(keep), nil
}

// Search implements Store.
func (m *Memory) Search(ctx context.Context, k Key, q []float32, n int) ([]Hit, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c := m.projects[[2]string{k.TenantID, k.ProjectID}][k.Collection]
	if err := CheckQuery(k, m.info(c), q); err != nil {
		return nil, err
	}
	if c == nil {
		return nil, nil
	}
	return Rank(c.docs, q, n), nil
}

// Limits implements Store.
func (m *Memory) Limits() Limits { return m.limits }

// Info implements Store.
func (m *Memory) Info(ctx context.Context, k Key) (Info, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.info(m.projects[[2]string{k.TenantID, k.ProjectID}][k.Collection]), nil
}
