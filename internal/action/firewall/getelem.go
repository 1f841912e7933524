package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// getElement asks the kernel for one element of a hash set by key
// (NFT_MSG_GETSETELEM without the dump flag). Unlike a dump, a lookup is
// consistent while the set's hash table is being resized: a dump walked
// during a resize (right after a bulk add) can miss or repeat elements.
// github.com/google/nftables has no call for it, so the message is built
// here and sent on a socket of our own in the same namespace.
func (b *Backend) getElement(set *nftables.Set, key []byte) (nftables.SetElement, bool, error) {
	keyAttr, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: key}})
	if err != nil {
		return nftables.SetElement{}, false, err
	}
	elem, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: keyAttr}})
	if err != nil {
		return nftables.SetElement{}, false, err
	}
	list, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: elem}})
	if err != nil {
		return nftables.SetElement{}, false, err
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(set.Table.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set.Name + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
	})
	if err != nil {
		return nftables.SetElement{}, false, err
	}
	msg := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	b.getMu.Lock()
	defer b.getMu.Unlock()
	if b.getConn == nil {
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: b.nsFD})
		if err != nil {
			return nftables.SetElement{}, false, fmt.Errorf("netlink: %w", err)
		}
		b.getConn = c
	}
	replies, err := b.getConn.Execute(msg)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nftables.SetElement{}, false, nil
		}
		return nftables.SetElement{}, false, fmt.Errorf("get element of set %s: %w", set.Name, err)
	}
	for _, r := range replies {
		els, err := decodeElemList(r.Data)
		if err != nil {
			return nftables.SetElement{}, false, fmt.Errorf("get element of set %s: %w", set.Name, err)
		}
		if len(els) > 0 {
			return els[0], true, nil
		}
	}
	return nftables.SetElement{}, false, nil
}

// decodeElemList decodes a NEWSETELEM message body (after the nfgenmsg
// header) into elements: key, key end, flags, timeout, expiration, comment.
func decodeElemList(data []byte) ([]nftables.SetElement, error) {
	if len(data) < 4 {
		return nil, errors.New("short message")
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	var out []nftables.SetElement
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				var e nftables.SetElement
				list.Nested(func(el *netlink.AttributeDecoder) error {
					el.ByteOrder = binary.BigEndian
					for el.Next() {
						switch el.Type() {
						case unix.NFTA_SET_ELEM_KEY:
							e.Key = dataValue(el.Bytes())
						case nftables.NFTA_SET_ELEM_KEY_END:
							e.KeyEnd = dataValue(el.Bytes())
						case unix.NFTA_SET_ELEM_FLAGS:
							e.IntervalEnd = el.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
						case unix.NFTA_SET_ELEM_TIMEOUT:
							e.Timeout = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_EXPIRATION:
							e.Expires = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_USERDATA:
							if c, ok := userdata.GetString(el.Bytes(), userdata.NFTNL_UDATA_SET_ELEM_COMMENT); ok {
								e.Comment = c
							}
						}
					}
					return nil
				})
				out = append(out, e)
			}
			return nil
		})
	}
	return out, ad.Err()
}

func dataValue(b []byte) []byte {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_DATA_VALUE {
			return append([]byte(nil), ad.Bytes()...)
		}
	}
	return nil
}
