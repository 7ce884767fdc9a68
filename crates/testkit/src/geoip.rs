//! Small MaxMind databases with known networks, written with `mmdb-writer` and
//! read by tests through the real `maxminddb` reader. Nothing is downloaded.

use mmdb_writer::{Value, Writer};

/// A network of a test City database.
#[derive(Debug, Clone, Copy)]
pub struct CityNet<'a> {
    /// CIDR, IPv4 or IPv6, e.g. `127.0.0.2/32`.
    pub network: &'a str,
    /// ISO country code, e.g. `AT`.
    pub country: &'a str,
    /// Continent code, e.g. `EU`.
    pub continent: &'a str,
    /// Latitude and longitude.
    pub location: (f64, f64),
}

/// Names in the eight languages GeoIP2 City records carry, so records are as
/// large as real ones and lookups cost what they will in production.
fn names(name: &str) -> Value {
    Value::map(
        ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]
            .map(|lang| (lang, Value::from(format!("{name} ({lang})")))),
    )
}

/// The bytes of a GeoIP2-City-shaped database holding `networks`.
pub fn city_db(networks: &[CityNet<'_>]) -> Vec<u8> {
    let mut writer = Writer::new("GeoIP2-City");
    for net in networks {
        let record = Value::map([
            (
                "city",
                Value::map([
                    ("geoname_id", Value::from(2_761_369u32)),
                    ("names", names("City")),
                ]),
            ),
            (
                "continent",
                Value::map([
                    ("code", Value::from(net.continent)),
                    ("geoname_id", Value::from(6_255_148u32)),
                    ("names", names(net.continent)),
                ]),
            ),
            (
                "country",
                Value::map([
                    ("geoname_id", Value::from(2_782_113u32)),
                    ("iso_code", Value::from(net.country)),
                    ("names", names(net.country)),
                ]),
            ),
            (
                "registered_country",
                Value::map([
                    ("geoname_id", Value::from(2_782_113u32)),
                    ("iso_code", Value::from(net.country)),
                    ("names", names(net.country)),
                ]),
            ),
            (
                "subdivisions",
                Value::from(vec![Value::map([
                    ("iso_code", Value::from("9")),
                    ("names", names("Region")),
                ])]),
            ),
            (
                "location",
                Value::map([
                    ("latitude", Value::from(net.location.0)),
                    ("longitude", Value::from(net.location.1)),
                    ("accuracy_radius", Value::from(10u16)),
                ]),
            ),
        ]);
        let network = net
            .network
            .parse::<mmdb_writer::ipnet::IpNet>()
            .expect("a CIDR");
        writer
            .insert_value(network, record)
            .expect("insert a network");
    }
    writer.to_bytes().expect("serialize the database")
}

/// The bytes of a GeoLite2-ASN-shaped database mapping networks to AS numbers.
pub fn asn_db(networks: &[(&str, u32)]) -> Vec<u8> {
    let mut writer = Writer::new("GeoLite2-ASN");
    for (network, asn) in networks {
        let record = Value::map([
            ("autonomous_system_number", Value::from(*asn)),
            ("autonomous_system_organization", Value::from("Test AS")),
        ]);
        let network = network
            .parse::<mmdb_writer::ipnet::IpNet>()
            .expect("a CIDR");
        writer
            .insert_value(network, record)
            .expect("insert a network");
    }
    writer.to_bytes().expect("serialize the database")
}
