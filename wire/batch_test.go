package wire

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-gw/sluice/broker"
)

func TestPackUnpack(t *testing.T) {
	a := EncodeRequest(goldenRequestJob)
	b := goldenMinimalRequest
	c := broker.Message{Key: "k3", Headers: map[string]string{}, Body: nil}
	packed := Pack([]broker.Message{a, b, c})
	if !IsBatch(packed) || packed.Key != a.Key || packed.Headers[HBatch] != "3" {
		t.Fatalf("packed: key %q headers %v", packed.Key, packed.Headers)
	}
	got, err := Unpack(packed)
	if err != nil {
		t.Fatal(err)
	}
	want := []broker.Message{a, b, {Key: "k3", Headers: map[string]string{}, Body: []byte{}}}
	if len(got) != 3 {
		t.Fatalf("unpacked %d messages", len(got))
	}
	for i := range want {
		if got[i].Key != want[i].Key || !reflect.DeepEqual(got[i].Headers, want[i].Headers) || string(got[i].Body) != string(want[i].Body) {
			t.Errorf("message %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	r, err := DecodeRequest(got[0])
	if err != nil || !reflect.DeepEqual(r, goldenRequestJob) {
		t.Fatalf("decoded %+v, %v; want %+v", r, err, goldenRequestJob)
	}
	if n := len(packed.Body); n != BatchOverhead+PackedSize(a)+PackedSize(b)+PackedSize(c) {
		t.Fatalf("packed body %d bytes, PackedSize says %d", n, BatchOverhead+PackedSize(a)+PackedSize(b)+PackedSize(c))
	}
}

// A batch of one is the message itself: a request alone keeps the format
// other tools read.
func TestPackOneIsTheMessage(t *testing.T) {
	m := EncodeRequest(goldenRequestJob)
	p := Pack([]broker.Message{m})
	if IsBatch(p) || !reflect.DeepEqual(p, m) {
		t.Fatalf("a batch of one changed the message: %+v", p)
	}
	got, err := Unpack(m)
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], m) {
		t.Fatalf("unpacking a plain message: %v, %v", got, err)
	}
}

// goldenBatch is a batch exactly as sluice writes it; it must always read.
var goldenBatch = broker.Message{Key: "a", Headers: map[string]string{HBatch: "2"},
	Body: []byte("sluice-batch/1\n" + "\x01a" + "\x02" + "\x01x\x011" + "\x01y\x00" + "\x02{}" + "\x01b" + "\x00" + "\x00")}

func TestGoldenBatch(t *testing.T) {
	p := Pack([]broker.Message{
		{Key: "a", Headers: map[string]string{"y": "", "x": "1"}, Body: []byte("{}")},
		{Key: "b", Headers: map[string]string{}},
	})
	if !reflect.DeepEqual(p, goldenBatch) {
		t.Fatalf("Pack wrote %q, the golden batch is %q", p.Body, goldenBatch.Body)
	}
	got, err := Unpack(goldenBatch)
	if err != nil || len(got) != 2 || got[0].Headers["x"] != "1" || string(got[0].Body) != "{}" || got[1].Key != "b" {
		t.Fatalf("golden batch read as %+v, %v", got, err)
	}
}

func TestUnpackRefusesMalformed(t *testing.T) {
	good := goldenBatch
	for name, m := range map[string]broker.Message{
		"count":     {Headers: map[string]string{HBatch: "x"}, Body: good.Body},
		"zero":      {Headers: map[string]string{HBatch: "0"}, Body: good.Body},
		"too few":   {Headers: map[string]string{HBatch: "3"}, Body: good.Body},
		"no magic":  {Headers: map[string]string{HBatch: "2"}, Body: good.Body[1:]},
		"truncated": {Headers: map[string]string{HBatch: "2"}, Body: good.Body[:len(good.Body)-3]},
		"huge len":  {Headers: map[string]string{HBatch: "1"}, Body: []byte(batchMagic + "\xff\xff\xff\xff\x0f")},
	} {
		if _, err := Unpack(m); !errors.Is(err, errBatch) {
			t.Errorf("%s: got %v, want a malformed-batch error", name, err)
		}
	}
}

func FuzzUnpack(f *testing.F) {
	f.Add(goldenBatch.Body)
	f.Add([]byte(batchMagic + strings.Repeat("\x01", 9)))
	f.Fuzz(func(t *testing.T, body []byte) {
		msgs, err := Unpack(broker.Message{Headers: map[string]string{HBatch: "1"}, Body: body})
		if err == nil {
			again, err := Unpack(Pack(append(msgs, broker.Message{Key: "z"})))
			if err != nil || len(again) != len(msgs)+1 {
				t.Fatalf("repacking %d messages: %d, %v", len(msgs), len(again), err)
			}
		}
	})
}

// BenchmarkPack packs 32 requests of 1 KiB, as group commit does under
// load.
func BenchmarkPack(b *testing.B) {
	msgs := make([]broker.Message, 32)
	for i := range msgs {
		r := *goldenRequestJob
		r.Body = make([]byte, 1024)
		msgs[i] = EncodeRequest(&r)
	}
	b.ReportAllocs()
	for b.Loop() {
		Pack(msgs)
	}
}
