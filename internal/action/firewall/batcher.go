package firewall

import (
	"context"
	"sync"
	"time"
)

// batcher coalesces concurrent Apply calls into one netlink batch: the txn
// engine runs transactions concurrently, and one batch of N elements costs
// little more than one element, while N batches cost N round trips.
type batcher struct {
	b      *Backend
	max    int
	linger time.Duration
	reqs   chan *batchReq
	done   chan struct{}
	wg     sync.WaitGroup
}

type batchReq struct {
	els []Element
	res chan error
}

func newBatcher(b *Backend, max int, linger time.Duration) *batcher {
	bt := &batcher{b: b, max: max, linger: linger, reqs: make(chan *batchReq, max), done: make(chan struct{})}
	bt.wg.Add(1)
	go bt.run()
	return bt
}

func (bt *batcher) stop() {
	close(bt.done)
	bt.wg.Wait()
}

// add queues els and waits for the batch that carries them to be flushed.
func (bt *batcher) add(ctx context.Context, els []Element) error {
	r := &batchReq{els: els, res: make(chan error, 1)}
	select {
	case bt.reqs <- r:
	case <-bt.done:
		return errBackendClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the request will be flushed; wait for the outcome even if
	// ctx ends, or the caller could not tell whether the kernel has it.
	select {
	case err := <-r.res:
		return err
	case <-bt.done:
		return errBackendClosed
	}
}

func (bt *batcher) run() {
	defer bt.wg.Done()
	for {
		var first *batchReq
		select {
		case first = <-bt.reqs:
		case <-bt.done:
			return
		}
		batch := []*batchReq{first}
		n := len(first.els)
		// Take whatever queued while the previous flush was in flight
		// (group commit): under load batches grow by themselves, and an
		// idle backend flushes a lone request at once.
	drain:
		for n < bt.max {
			select {
			case r := <-bt.reqs:
				batch = append(batch, r)
				n += len(r.els)
			default:
				break drain
			}
		}
		if bt.linger > 0 && n < bt.max {
			timer := time.NewTimer(bt.linger)
		collect:
			for n < bt.max {
				select {
				case r := <-bt.reqs:
					batch = append(batch, r)
					n += len(r.els)
				case <-timer.C:
					break collect
				case <-bt.done:
					break collect
				}
			}
			timer.Stop()
		}
		bt.flush(batch, n)
	}
}

func (bt *batcher) flush(batch []*batchReq, n int) {
	bt.b.m.batchElems.Observe(float64(n))
	all := make([]Element, 0, n)
	for _, r := range batch {
		all = append(all, r.els...)
	}
	err := bt.b.AddElements(context.Background(), all)
	if err == nil || len(batch) == 1 {
		for _, r := range batch {
			r.res <- err
		}
		return
	}
	// One bad request (an overlapping range, say) fails the whole atomic
	// batch: retry each request alone so the others are not punished.
	for _, r := range batch {
		r.res <- bt.b.AddElements(context.Background(), r.els)
	}
}
