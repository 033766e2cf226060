//! Property tests of the codec: round trips and "no input panics the decoder".

use proptest::prelude::*;
use tofu::wire::{encode, Decoder, FrameHeader};
use tofu::{Message, OpCode};

fn arb_message() -> impl Strategy<Value = Message> {
    (
        any::<u16>(),
        0u8..10,
        any::<bool>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..2000),
    )
        .prop_map(|(channel, op, more, id, text, body)| {
            let mut m = Message::with_opcode(OpCode::try_from(op).unwrap());
            m.header.channel = channel;
            m.header.more = more;
            m.header.oob = false;
            m.header.message_id = id;
            *m.text_headers_mut() = text;
            m.set_body(&body);
            m
        })
}

proptest! {
    #[test]
    fn header_bytes_round_trip(bytes in any::<[u8; 16]>()) {
        let h = FrameHeader::parse(&bytes);
        prop_assert_eq!(h.to_bytes(), bytes);
    }

    #[test]
    fn messages_round_trip_with_any_cuts(
        msgs in proptest::collection::vec(arb_message(), 1..6),
        cuts in proptest::collection::vec(1usize..700, 1..20),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            encode(m, &mut stream).unwrap();
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < stream.len() {
            let end = (pos + cuts[i % cuts.len()]).min(stream.len());
            i += 1;
            let mut chunk = &stream[pos..end];
            while !chunk.is_empty() {
                let p = d.decode(chunk, &mut || Some(Message::new())).unwrap();
                chunk = &chunk[p.consumed..];
                got.extend(p.frame);
            }
            pos = end;
        }
        prop_assert_eq!(got.len(), msgs.len());
        for (g, w) in got.iter().zip(&msgs) {
            prop_assert_eq!(g.header, w.header);
            prop_assert_eq!(g.text_headers(), w.text_headers());
            prop_assert_eq!(g.body(), w.body());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), step in 1usize..64) {
        let mut d = Decoder::new();
        let mut pos = 0;
        let mut starve = false;
        while pos < bytes.len() {
            let end = (pos + step).min(bytes.len());
            starve = !starve;
            let r = d.decode(&bytes[pos..end], &mut || if starve { None } else { Some(Message::new()) });
            match r {
                Ok(p) => {
                    prop_assert!(p.consumed <= end - pos);
                    pos += p.consumed;
                    if p.consumed == 0 && !d.is_starved() {
                        prop_assert!(false, "no progress without starvation");
                    }
                }
                Err(_) => break,
            }
        }
    }
}
