// Package geoip reads country, city and ASN from MaxMind-format databases
// (GeoLite2/GeoIP2 City or Country, and ASN; or any MMDB with the same
// layout, such as DB-IP's lite databases).
package geoip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"

	"github.com/quell-ir/quell/internal/enrich/watch"
)

// Config names the database files; either may be empty.
type Config struct {
	// CityDB is a GeoLite2-City or GeoLite2-Country database.
	CityDB string `yaml:"city_db"`
	// ASNDB is a GeoLite2-ASN database.
	ASNDB string `yaml:"asn_db"`
	// FailClosed marks events fail-closed when a lookup fails.
	FailClosed bool `yaml:"fail_closed"`
}

// DefaultConfig returns the defaults: no databases (GeoIP off).
func DefaultConfig() Config { return Config{} }

// Enabled reports whether any database is configured.
func (c Config) Enabled() bool { return c.CityDB != "" || c.ASNDB != "" }

// Validate checks the config; the files are checked by Open.
func (c Config) Validate() error { return nil }

// Info is what the databases say about an address.
type Info struct {
	Country string // ISO 3166-1 alpha-2
	City    string // English name
	ASN     int
	ASOrg   string
}

type cityRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	City struct {
		Names map[string]string `maxminddb:"names"`
	} `maxminddb:"city"`
}

type asnRecord struct {
	Number uint   `maxminddb:"autonomous_system_number"`
	Org    string `maxminddb:"autonomous_system_organization"`
}

// DB is a pair of open databases. The files are memory-mapped, so a
// reader must not be closed while a lookup uses it: lookups hold the read
// lock, and Reload swaps under the write lock before closing the old pair.
type DB struct {
	cfg  Config
	mu   sync.RWMutex
	city *maxminddb.Reader
	asn  *maxminddb.Reader
}

// Open opens the configured databases.
func Open(c Config) (*DB, error) {
	city, asn, err := open(c)
	if err != nil {
		return nil, err
	}
	return &DB{cfg: c, city: city, asn: asn}, nil
}

func open(c Config) (city, asn *maxminddb.Reader, err error) {
	if c.CityDB != "" {
		if city, err = maxminddb.Open(c.CityDB); err != nil {
			return nil, nil, fmt.Errorf("city_db: open %s: %w", c.CityDB, err)
		}
	}
	if c.ASNDB != "" {
		if asn, err = maxminddb.Open(c.ASNDB); err != nil {
			if city != nil {
				city.Close()
			}
			return nil, nil, fmt.Errorf("asn_db: open %s: %w", c.ASNDB, err)
		}
	}
	return city, asn, nil
}

// Reload reopens the databases (geoipupdate replaces them weekly). On
// error the open ones stay in use.
func (db *DB) Reload() error {
	city, asn, err := open(db.cfg)
	if err != nil {
		return err
	}
	db.mu.Lock()
	oldCity, oldASN := db.city, db.asn
	db.city, db.asn = city, asn
	db.mu.Unlock()
	var errs []error
	if oldCity != nil {
		errs = append(errs, oldCity.Close())
	}
	if oldASN != nil {
		errs = append(errs, oldASN.Close())
	}
	return errors.Join(errs...)
}

// Watch reloads the databases when their files change, until ctx ends.
func (db *DB) Watch(ctx context.Context, log *slog.Logger, debounce time.Duration) error {
	var paths []string
	for _, p := range []string{db.cfg.CityDB, db.cfg.ASNDB} {
		if p != "" {
			paths = append(paths, p)
		}
	}
	return watch.Files(ctx, log, debounce, paths, func(string) {
		if err := db.Reload(); err != nil {
			log.Warn("geoip reload failed; keeping the open databases", "err", err)
		} else {
			log.Info("geoip databases reloaded")
		}
	})
}

// Lookup returns what the databases know about addr; found is false when
// neither has it.
func (db *DB) Lookup(addr netip.Addr) (info Info, found bool, err error) {
	db.mu.RLock()
	defer db.mu.RUnlock()
	addr = addr.Unmap().WithZone("")
	if db.city != nil {
		var rec cityRecord
		res := db.city.Lookup(addr)
		if err := res.Err(); err != nil {
			return info, false, fmt.Errorf("city lookup %s: %w", addr, err)
		}
		if res.Found() {
			if err := res.Decode(&rec); err != nil {
				return info, false, fmt.Errorf("city decode %s: %w", addr, err)
			}
			info.Country, info.City, found = rec.Country.ISOCode, rec.City.Names["en"], true
		}
	}
	if db.asn != nil {
		var rec asnRecord
		res := db.asn.Lookup(addr)
		if err := res.Err(); err != nil {
			return info, found, fmt.Errorf("asn lookup %s: %w", addr, err)
		}
		if res.Found() {
			if err := res.Decode(&rec); err != nil {
				return info, found, fmt.Errorf("asn decode %s: %w", addr, err)
			}
			info.ASN, info.ASOrg, found = int(rec.Number), rec.Org, true
		}
	}
	return info, found, nil
}

// Close unmaps the databases.
func (db *DB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	var errs []error
	if db.city != nil {
		errs = append(errs, db.city.Close())
	}
	if db.asn != nil {
		errs = append(errs, db.asn.Close())
	}
	db.city, db.asn = nil, nil
	return errors.Join(errs...)
}
