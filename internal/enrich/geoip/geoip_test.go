package geoip

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// writeDB builds a small MMDB of the given type.
func writeDB(t testing.TB, dbType string, nets map[string]mmdbtype.Map) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: dbType, RecordSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, v := range nets {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.Insert(n, v); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(t.TempDir(), dbType+".mmdb")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDBs writes City and ASN databases and reads them back.
func TestDBs(t *testing.T) {
	city := writeDB(t, "GeoLite2-City", map[string]mmdbtype.Map{
		"81.2.69.0/24": {
			"country": mmdbtype.Map{"iso_code": mmdbtype.String("GB")},
			"city":    mmdbtype.Map{"names": mmdbtype.Map{"en": mmdbtype.String("London"), "de": mmdbtype.String("London")}},
		},
		"2a02:ff00::/24": {"country": mmdbtype.Map{"iso_code": mmdbtype.String("IT")}},
	})
	asn := writeDB(t, "GeoLite2-ASN", map[string]mmdbtype.Map{
		"81.2.69.0/24": {"autonomous_system_number": mmdbtype.Uint32(20712), "autonomous_system_organization": mmdbtype.String("Andrews & Arnold Ltd")},
	})
	db, err := Open(Config{CityDB: city, ASNDB: asn})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, c := range []struct {
		ip    string
		want  Info
		found bool
	}{
		{"81.2.69.160", Info{Country: "GB", City: "London", ASN: 20712, ASOrg: "Andrews & Arnold Ltd"}, true},
		{"::ffff:81.2.69.1", Info{Country: "GB", City: "London", ASN: 20712, ASOrg: "Andrews & Arnold Ltd"}, true},
		{"2a02:ff00::1", Info{Country: "IT"}, true},
		{"192.0.2.1", Info{}, false},
	} {
		got, found, err := db.Lookup(netip.MustParseAddr(c.ip))
		if err != nil || found != c.found || got != c.want {
			t.Errorf("Lookup(%s) = %+v, %v, %v; want %+v, %v", c.ip, got, found, err, c.want, c.found)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(Config{CityDB: filepath.Join(t.TempDir(), "missing.mmdb")}); err == nil {
		t.Error("missing city db accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.mmdb")
	os.WriteFile(bad, []byte("not an mmdb"), 0o644)
	if _, err := Open(Config{ASNDB: bad}); err == nil {
		t.Error("corrupt asn db accepted")
	}
}

// TestReloadUnderLookups replaces the City database while lookups run; the
// race detector checks that no lookup reads a closed reader.
func TestReloadUnderLookups(t *testing.T) {
	gb := map[string]mmdbtype.Map{"81.2.69.0/24": {"country": mmdbtype.Map{"iso_code": mmdbtype.String("GB")}}}
	fr := map[string]mmdbtype.Map{"81.2.69.0/24": {"country": mmdbtype.Map{"iso_code": mmdbtype.String("FR")}}}
	src := writeDB(t, "GeoLite2-Country", gb)
	path := filepath.Join(t.TempDir(), "country.mmdb")
	copyFile(t, src, path)
	db, err := Open(Config{CityDB: path})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := db.Lookup(netip.MustParseAddr("81.2.69.1")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	copyFile(t, writeDB(t, "GeoLite2-Country", fr), path)
	if err := db.Reload(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-done
	if info, _, _ := db.Lookup(netip.MustParseAddr("81.2.69.1")); info.Country != "FR" {
		t.Fatalf("after reload: %+v", info)
	}
	// A broken replacement keeps the open database.
	os.WriteFile(path+".tmp", []byte("garbage"), 0o644)
	os.Rename(path+".tmp", path)
	if err := db.Reload(); err == nil {
		t.Fatal("reload of a corrupt file succeeded")
	}
	if info, _, _ := db.Lookup(netip.MustParseAddr("81.2.69.1")); info.Country != "FR" {
		t.Fatalf("after failed reload: %+v", info)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}
