//! Placeholder parsing never panics; a parsed template renders back to a
//! value in which every secret was replaced, and a value without `${{` is
//! a literal that renders to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_agent::secrets::placeholder::{Origin, Template};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mentions = Template::mentions_placeholder(text.as_bytes());
    match Template::parse(text) {
        Ok(template) => {
            if !mentions {
                assert!(template.is_literal());
                let same = template.render(|_| Err::<String, ()>(())).unwrap();
                assert_eq!(same, text);
            }
            let rendered = template
                .render(|name| {
                    assert!(tether_agent::secrets::placeholder::valid_secret_name(name));
                    Ok::<_, ()>("X".to_owned())
                })
                .unwrap();
            if !template.is_literal() {
                assert!(rendered.len() < text.len() || rendered.contains('X'));
            }
        }
        Err(_) => assert!(mentions, "only a placeholder can fail to parse: {text:?}"),
    }
    let _ = Origin::parse(text);
});
