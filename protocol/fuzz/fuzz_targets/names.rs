//! Name validation: any string is accepted or refused, never a panic, and
//! what is accepted is safe as one path component.
#![no_main]

use fileshare_protocol::ids::{validate_name, NameKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [NameKind::User, NameKind::Group, NameKind::File] {
        if validate_name(kind, name).is_ok() {
            assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
            assert!(!name.contains('/') && !name.contains('\0'), "{name:?}");
        }
    }
});
