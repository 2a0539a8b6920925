//! The plugin contract in `wit/`, checked here until the plugin runtime
//! that implements it lands: it must parse, and every item must carry a
//! doc comment (it is the plugin author's reference).

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn resolve() -> (wit_parser::Resolve, wit_parser::PackageId) {
        let mut resolve = wit_parser::Resolve::default();
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let (package, _) = resolve.push_dir(&wit).expect("wit/ parses");
        (resolve, package)
    }

    #[test]
    fn the_contract_parses_and_has_the_plugin_world() {
        let (resolve, package) = resolve();
        let pkg = &resolve.packages[package];
        assert_eq!(pkg.name.to_string(), "weir:plugin@0.2.0");
        let world = &resolve.worlds[pkg.worlds["plugin"]];
        let exports: Vec<String> = world
            .exports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect();
        for hook in [
            "init",
            "hooks",
            "on-connect",
            "on-helo",
            "on-mail-from",
            "on-rcpt",
            "on-data",
            "on-pre-delivery",
            "on-delivery-result",
        ] {
            assert!(
                exports.iter().any(|e| e == hook),
                "export {hook} missing: {exports:?}"
            );
        }
        let imports: Vec<String> = world
            .imports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect();
        for capability in [
            "transaction",
            "log",
            "dns",
            "state",
            "message",
            "auth-results",
            "config",
        ] {
            assert!(
                imports
                    .iter()
                    .any(|i| i.ends_with(&format!("/{capability}@0.2.0"))),
                "import {capability} missing: {imports:?}"
            );
        }
    }

    #[test]
    fn every_item_of_the_contract_is_documented() {
        let (resolve, package) = resolve();
        let pkg = &resolve.packages[package];
        let mut missing = Vec::new();
        for (name, &id) in &pkg.interfaces {
            let iface = &resolve.interfaces[id];
            if iface.docs.contents.is_none() {
                missing.push(format!("interface {name}"));
            }
            for (f, func) in &iface.functions {
                if func.docs.contents.is_none() {
                    missing.push(format!("{name}.{f}"));
                }
            }
            for (t, &ty) in &iface.types {
                let def = &resolve.types[ty];
                // `use`d types are documented where they are defined.
                if matches!(def.kind, wit_parser::TypeDefKind::Type(_)) {
                    continue;
                }
                if def.docs.contents.is_none() {
                    missing.push(format!("{name}.{t}"));
                }
                let undocumented = |docs: &wit_parser::Docs| docs.contents.is_none();
                match &def.kind {
                    wit_parser::TypeDefKind::Record(r) => missing.extend(
                        r.fields
                            .iter()
                            .filter(|f| undocumented(&f.docs))
                            .map(|f| format!("{name}.{t}.{}", f.name)),
                    ),
                    wit_parser::TypeDefKind::Variant(v) => missing.extend(
                        v.cases
                            .iter()
                            .filter(|c| undocumented(&c.docs))
                            .map(|c| format!("{name}.{t}.{}", c.name)),
                    ),
                    wit_parser::TypeDefKind::Enum(e) => missing.extend(
                        e.cases
                            .iter()
                            .filter(|c| undocumented(&c.docs))
                            .map(|c| format!("{name}.{t}.{}", c.name)),
                    ),
                    _ => {}
                }
            }
        }
        let world = &resolve.worlds[pkg.worlds["plugin"]];
        if world.docs.contents.is_none() {
            missing.push("world plugin".into());
        }
        for (key, item) in &world.exports {
            if let wit_parser::WorldItem::Function(f) = item
                && f.docs.contents.is_none()
            {
                missing.push(format!("export {}", resolve.name_world_key(key)));
            }
        }
        assert!(
            missing.is_empty(),
            "undocumented items in wit/: {missing:?}"
        );
    }
}
