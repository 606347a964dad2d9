//! The frame decoder on arbitrary bytes, as a hostile peer could send them: it must never panic,
//! never consume more than one frame's limit, and whatever it accepts must survive encoding and
//! decoding again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::wire::frame::{self, Control, RequestHead, ResponseHead};

fn check<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(Some((message, used))) = frame::decode::<T>(data) {
        assert!(used <= data.len() && used <= frame::PREFIX_LEN + frame::MAX_FRAME_LEN);
        let encoded = frame::encode(&message).expect("a decoded frame encodes");
        let (again, _) = frame::decode::<T>(&encoded).expect("it decodes").expect("whole");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<Control>(data);
    check::<RequestHead>(data);
    check::<ResponseHead>(data);
});
