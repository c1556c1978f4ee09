package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/sluice-gw/sluice/broker"
)

// HBatch marks a message that packs several request messages (group
// commit: requests that arrived together share one broker write). Its
// value is how many.
const HBatch = "sluice-batch"

// batchMagic opens a packed body, so a body that only claims to be a batch
// is not read as one.
const batchMagic = "sluice-batch/1\n"

// PackedSize is how many bytes Pack adds to a message's own size (its key,
// headers and body): a packer that must stay under a broker's message limit
// adds this per message, and batchMagic once.
func PackedSize(m broker.Message) int {
	n := uvarintLen(len(m.Key)) + len(m.Key) + uvarintLen(len(m.Headers)) + uvarintLen(len(m.Body)) + len(m.Body)
	for k, v := range m.Headers {
		n += uvarintLen(len(k)) + len(k) + uvarintLen(len(v)) + len(v)
	}
	return n
}

// BatchOverhead is what a packed message needs beside its parts.
const BatchOverhead = len(batchMagic)

// Pack packs msgs, in order, into one message. One message is returned as
// it is: a batch of one is an ordinary request message. NotBefore is not
// packed (ingress never holds a new request back).
//
// A packed body is batchMagic, then per message: its key, the number of
// its headers, each header's name and value (sorted by name), and its
// body, each string as a uvarint length and its bytes. The packed
// message's key is the first message's, its one header HBatch.
func Pack(msgs []broker.Message) broker.Message {
	if len(msgs) == 1 {
		return msgs[0]
	}
	size := BatchOverhead // the bodies and room for typical headers: no pass over every header
	for _, m := range msgs {
		size += len(m.Body) + 512
	}
	b := make([]byte, 0, size)
	b = append(b, batchMagic...)
	names := make([]string, 0, 16)
	for _, m := range msgs {
		b = appendString(b, m.Key)
		b = binary.AppendUvarint(b, uint64(len(m.Headers)))
		names = names[:0]
		for k := range m.Headers {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			b = appendString(b, k)
			b = appendString(b, m.Headers[k])
		}
		b = binary.AppendUvarint(b, uint64(len(m.Body)))
		b = append(b, m.Body...)
	}
	return broker.Message{Key: msgs[0].Key, Headers: map[string]string{HBatch: strconv.Itoa(len(msgs))}, Body: b}
}

// IsBatch reports whether m packs several messages.
func IsBatch(m broker.Message) bool { return m.Headers[HBatch] != "" }

var errBatch = errors.New("malformed batch")

// Unpack returns the messages m packs, in the order they were packed; their
// bodies share m's memory. A message that is no batch is returned alone.
func Unpack(m broker.Message) ([]broker.Message, error) {
	if !IsBatch(m) {
		return []broker.Message{m}, nil
	}
	want, err := strconv.Atoi(m.Headers[HBatch])
	if err != nil || want < 1 {
		return nil, fmt.Errorf("%w: %s %q", errBatch, HBatch, m.Headers[HBatch])
	}
	b := m.Body
	if len(b) < len(batchMagic) || string(b[:len(batchMagic)]) != batchMagic {
		return nil, fmt.Errorf("%w: no %q", errBatch, batchMagic[:len(batchMagic)-1])
	}
	b = b[len(batchMagic):]
	out := make([]broker.Message, 0, want)
	for len(b) > 0 {
		var msg broker.Message
		var s []byte
		if s, b, err = readBytes(b); err != nil {
			return nil, err
		}
		msg.Key = string(s)
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)) {
			return nil, fmt.Errorf("%w: header count", errBatch)
		}
		b = b[k:]
		msg.Headers = make(map[string]string, n)
		for range n {
			var name, value []byte
			if name, b, err = readBytes(b); err != nil {
				return nil, err
			}
			if value, b, err = readBytes(b); err != nil {
				return nil, err
			}
			msg.Headers[string(name)] = string(value)
		}
		if s, b, err = readBytes(b); err != nil {
			return nil, err
		}
		msg.Body = s
		out = append(out, msg)
	}
	if len(out) != want {
		return nil, fmt.Errorf("%w: %d messages, %s says %d", errBatch, len(out), HBatch, want)
	}
	return out, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// readBytes reads one length-prefixed string off b.
func readBytes(b []byte) (s, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("%w: truncated", errBatch)
	}
	end := k + int(n)
	return b[k:end:end], b[end:], nil
}

func uvarintLen(n int) int {
	l := 1
	for n >= 0x80 {
		n >>= 7
		l++
	}
	return l
}
