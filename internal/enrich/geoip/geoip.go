// Package geoip reads country, city and ASN from MaxMind-format databases
// (GeoLite2/GeoIP2 City or Country, and ASN; or any MMDB with the same
// layout, such as DB-IP's lite databases).
package geoip

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/oschwald/maxminddb-golang/v2"
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

// DB is a pair of open databases. The files are memory-mapped.
type DB struct {
	city *maxminddb.Reader
	asn  *maxminddb.Reader
}

// Open opens the configured databases.
func Open(c Config) (*DB, error) {
	db := &DB{}
	var err error
	if c.CityDB != "" {
		if db.city, err = maxminddb.Open(c.CityDB); err != nil {
			return nil, fmt.Errorf("city_db: open %s: %w", c.CityDB, err)
		}
	}
	if c.ASNDB != "" {
		if db.asn, err = maxminddb.Open(c.ASNDB); err != nil {
			db.Close()
			return nil, fmt.Errorf("asn_db: open %s: %w", c.ASNDB, err)
		}
	}
	return db, nil
}

// Lookup returns what the databases know about addr; found is false when
// neither has it.
func (db *DB) Lookup(addr netip.Addr) (info Info, found bool, err error) {
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
	var errs []error
	if db.city != nil {
		errs = append(errs, db.city.Close())
	}
	if db.asn != nil {
		errs = append(errs, db.asn.Close())
	}
	return errors.Join(errs...)
}
