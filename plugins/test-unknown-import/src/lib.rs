//! A component that imports an interface the gateway does not provide (as
//! a componentize-js build imports `wasi:http` unless told not to): the
//! gateway must refuse it at load and name the import.

wit_bindgen::generate!({
    inline: "
        package test:unknown;

        interface clock {
            now: func() -> u64;
        }

        world plugin {
            import clock;
            export hooks: func() -> list<u8>;
        }
    ",
    world: "plugin",
});

struct Component;

impl Guest for Component {
    fn hooks() -> Vec<u8> {
        vec![test::unknown::clock::now() as u8]
    }
}

export!(Component);
