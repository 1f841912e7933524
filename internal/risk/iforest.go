package risk

import (
	"math"
	"math/rand/v2"
	"sort"
)

// Isolation Forest (Liu, Ting and Zhou, 2008): anomalies are few and
// different, so random axis-aligned splits isolate them in fewer steps than
// normal points. No well-kept Go library exists for it (the ones on GitHub
// are unmaintained single-author ports), and the algorithm is small, so it
// is implemented here.

// inode is a node of an isolation tree, in a flat slice: children are
// indices, -1 for a leaf.
type inode struct {
	split       float64 // inner node: threshold; leaf: c(size), precomputed
	feature     int32
	left, right int32
}

type itree []inode

// Forest is a trained isolation forest. It is immutable after training and
// safe for concurrent scoring.
type Forest struct {
	trees  []itree
	psi    int
	cpsi   float64
	dims   int
	sorted []float64 // training scores, ascending, for percentile ranks
}

const eulerGamma = 0.5772156649015329

// cFactor is the average path length of an unsuccessful search in a binary
// search tree of n points: the normalizer of path lengths.
func cFactor(n int) float64 {
	switch {
	case n <= 1:
		return 0
	case n == 2:
		return 1
	}
	fn := float64(n)
	return 2*(math.Log(fn-1)+eulerGamma) - 2*(fn-1)/fn
}

// TrainForest builds trees isolation trees, each on a random subsample of
// size sample (capped at len(data)). Every row of data must have the same
// length.
func TrainForest(data [][]float64, trees, sample int, rng *rand.Rand) *Forest {
	if len(data) == 0 || trees < 1 {
		return nil
	}
	psi := min(sample, len(data))
	f := &Forest{psi: psi, cpsi: cFactor(psi), dims: len(data[0])}
	maxDepth := int(math.Ceil(math.Log2(float64(max(psi, 2)))))
	idx := make([]int, len(data))
	for i := range idx {
		idx[i] = i
	}
	for t := 0; t < trees; t++ {
		// Partial Fisher-Yates: the first psi indices are the subsample.
		for i := 0; i < psi; i++ {
			j := i + rng.IntN(len(idx)-i)
			idx[i], idx[j] = idx[j], idx[i]
		}
		sub := make([]int, psi)
		copy(sub, idx[:psi])
		var tr itree
		build(&tr, data, sub, 0, maxDepth, f.dims, rng)
		f.trees = append(f.trees, tr)
	}
	f.sorted = make([]float64, len(data))
	for i, x := range data {
		f.sorted[i] = f.Score(x)
	}
	sort.Float64s(f.sorted)
	return f
}

func build(tr *itree, data [][]float64, rows []int, depth, maxDepth, dims int, rng *rand.Rand) int32 {
	me := int32(len(*tr))
	// A leaf's path length is its depth plus c(size), the expected depth
	// of the subtree that was not grown; c is computed once, here.
	*tr = append(*tr, inode{left: -1, right: -1, split: cFactor(len(rows))})
	if len(rows) <= 1 || depth >= maxDepth {
		return me
	}
	// Pick a feature that is not constant on these rows; if none is, the
	// rows cannot be separated and this is a leaf.
	start := rng.IntN(dims)
	for k := 0; k < dims; k++ {
		ft := (start + k) % dims
		lo, hi := data[rows[0]][ft], data[rows[0]][ft]
		for _, r := range rows[1:] {
			v := data[r][ft]
			lo, hi = min(lo, v), max(hi, v)
		}
		if lo == hi {
			continue
		}
		split := lo + rng.Float64()*(hi-lo)
		// Partition rows in place: <= split left, > split right. split
		// is in [lo, hi), so both sides are non-empty.
		i := 0
		for j, r := range rows {
			if data[r][ft] <= split {
				rows[i], rows[j] = rows[j], rows[i]
				i++
			}
		}
		l := build(tr, data, rows[:i], depth+1, maxDepth, dims, rng)
		r := build(tr, data, rows[i:], depth+1, maxDepth, dims, rng)
		(*tr)[me] = inode{feature: int32(ft), split: split, left: l, right: r}
		return me
	}
	return me
}

func (tr itree) pathLength(x []float64) float64 {
	n, depth := int32(0), 0
	for {
		nd := tr[n]
		if nd.left < 0 {
			return float64(depth) + nd.split
		}
		if x[nd.feature] <= nd.split {
			n = nd.left
		} else {
			n = nd.right
		}
		depth++
	}
}

// Score is the anomaly score s(x) = 2^(-E[h(x)]/c(psi)) in (0, 1]: near 1
// is anomalous, around 0.5 or below is normal.
func (f *Forest) Score(x []float64) float64 {
	if f.cpsi == 0 {
		return 0.5
	}
	sum := 0.0
	for _, tr := range f.trees {
		sum += tr.pathLength(x)
	}
	return math.Pow(2, -sum/float64(len(f.trees))/f.cpsi)
}

// Rank is the fraction of training points scoring below s (ties count
// half): how unusual x is compared with recent history, in 0..1, with 0.5
// for a typical point.
func (f *Forest) Rank(s float64) float64 {
	n := len(f.sorted)
	if n == 0 {
		return 0.5
	}
	lo := sort.SearchFloat64s(f.sorted, s)
	hi := lo
	for hi < n && f.sorted[hi] == s {
		hi++
	}
	return (float64(lo) + float64(hi-lo)/2) / float64(n)
}
