// Package firewall implements host containment with nftables: the actions
// firewall.block and firewall.isolate, over netlink (github.com/google/nftables
// and github.com/ti-mo/conntrack), never by running nft(8).
//
// quell owns one table (inet quell by default). Blocks are elements of
// named sets that carry the containment's timeout, so the kernel expires
// them even if quell is down; the table's base chains hook in at a priority
// before the host's own filter chains. See docs/firewall.md.
package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"
)

// Config configures the firewall backend and its guards.
type Config struct {
	// Table is the nftables table quell owns (family inet).
	Table string `yaml:"table"`
	// Priority is the base chains' hook priority. Lower runs first; the
	// default, -10, runs after conntrack (-200) and before the usual filter
	// chains (0) of nft, iptables-nft, firewalld and ufw.
	Priority int `yaml:"priority"`
	// NetNS, when set, is the path of a network namespace (e.g.
	// /run/netns/web) whose firewall quell manages instead of the host's.
	NetNS string `yaml:"netns"`
	// BlastRadiusMaxShare is the largest share (0..1] of current flows a
	// block may cut; a block above it is denied.
	BlastRadiusMaxShare float64 `yaml:"blast_radius_max_share"`
	// BlastRadiusMinFlows is the flow count below which the share is not
	// meaningful (one flow out of three is 33%) and the guard passes.
	BlastRadiusMinFlows int `yaml:"blast_radius_min_flows"`
	// BlastRadiusSnapshotAge is how old the conntrack snapshot the guard
	// measures may be. Dumping the table walks the kernel's whole
	// conntrack hash (about 9 ms for 262,144 buckets), which would
	// otherwise sit between the event and the block; a background refresh
	// keeps a snapshot this fresh. 0 dumps on every check.
	BlastRadiusSnapshotAge time.Duration `yaml:"blast_radius_snapshot_age"`
	// Protected lists prefixes that may never be blocked, besides the
	// host's own addresses and default gateways, which are always protected.
	Protected []netip.Prefix `yaml:"protected"`
	// Peers are the engine's own peers (API clients, the database, other
	// replicas): protected like Protected, and always allowed by isolate.
	Peers []netip.Prefix `yaml:"peers"`
	// IsolateAllow is always allowed by firewall.isolate (the management
	// network), in addition to the prefixes an isolate step names.
	IsolateAllow []netip.Prefix `yaml:"isolate_allow"`
	// BatchMaxElements and BatchLinger bound the Apply batcher: concurrent
	// applies are flushed as one netlink batch when this many elements are
	// queued or this long after the first one queued, whichever is first.
	BatchMaxElements int           `yaml:"batch_max_elements"`
	BatchLinger      time.Duration `yaml:"batch_linger"`
	// VerifyTolerance is how far the kernel's remaining timeout may differ
	// from the expected expiry when Verify reads it back.
	VerifyTolerance time.Duration `yaml:"verify_tolerance"`
}

// DefaultConfig returns the defaults documented in docs/firewall.md.
func DefaultConfig() Config {
	return Config{
		Table:                  "quell",
		Priority:               -10,
		BlastRadiusMaxShare:    0.30,
		BlastRadiusMinFlows:    20,
		BlastRadiusSnapshotAge: time.Second,
		BatchMaxElements:       1024,
		BatchLinger:            0,
		VerifyTolerance:        2 * time.Second,
	}
}

var tableNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,30}$`)

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	var errs []error
	if !tableNameRE.MatchString(c.Table) {
		errs = append(errs, fmt.Errorf("firewall.table: %q is not a table name (letter, then up to 30 of [A-Za-z0-9_-])", c.Table))
	}
	if c.Priority < -400 || c.Priority > 400 {
		errs = append(errs, fmt.Errorf("firewall.priority: %d is outside -400..400", c.Priority))
	}
	if c.BlastRadiusMaxShare <= 0 || c.BlastRadiusMaxShare > 1 {
		errs = append(errs, fmt.Errorf("firewall.blast_radius_max_share: %v is outside (0, 1]", c.BlastRadiusMaxShare))
	}
	if c.BlastRadiusMinFlows < 0 {
		errs = append(errs, fmt.Errorf("firewall.blast_radius_min_flows: %d is negative", c.BlastRadiusMinFlows))
	}
	for name, ps := range map[string][]netip.Prefix{"protected": c.Protected, "peers": c.Peers, "isolate_allow": c.IsolateAllow} {
		for i, p := range ps {
			if !p.IsValid() {
				errs = append(errs, fmt.Errorf("firewall.%s[%d]: not a valid prefix", name, i))
			}
		}
	}
	if c.BatchMaxElements < 1 || c.BatchMaxElements > 100000 {
		errs = append(errs, fmt.Errorf("firewall.batch_max_elements: %d is outside 1..100000", c.BatchMaxElements))
	}
	if c.BatchLinger < 0 || c.BatchLinger > time.Second {
		errs = append(errs, fmt.Errorf("firewall.batch_linger: %v is outside 0..1s", c.BatchLinger))
	}
	if c.VerifyTolerance <= 0 {
		errs = append(errs, fmt.Errorf("firewall.verify_tolerance: %v must be positive", c.VerifyTolerance))
	}
	return errors.Join(errs...)
}
