"""
Tests for hq.config: defaults, types and errors naming the key.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from hq.config import Config, ConfigError, config_from_dict, load_config


class ConfigTests(SynchronousTestCase):
    """
    Reading the TOML configuration.
    """

    def test_defaults_are_the_go_servers(self) -> None:
        """The defaults match the Go server's."""
        config = Config()
        self.assertEqual(
            (config.server_id, config.addr, config.data_dir, config.log_level, config.queues),
            (0, "0.0.0.0:19900", "", "info", 8192),
        )
        self.assertEqual(config.dispatchers, os.cpu_count())
        self.assertEqual((config.max_workers, config.shutdown_timeout), (0, 10))
        self.assertEqual((config.job_lifetime, config.job_list_default_limit), (2419200, 0))
        self.assertEqual((config.ui, config.ui_basename), (True, "/ui"))

    def test_sender_process_default(self) -> None:
        """
        The sender process is on when the machine has more than one CPU (a
        second process gains nothing on one), and a boolean turns it off.
        """
        self.assertEqual(Config().sender_process, (os.cpu_count() or 1) > 1)
        self.assertFalse(config_from_dict({"sender_process": False}).sender_process)
        self.assertTrue(config_from_dict({"sender_process": True}).sender_process)

    def test_reads_toml(self) -> None:
        """A TOML file's values override the defaults."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('addr = "127.0.0.1:8080"\nmax_workers = 3\nlog_level = "WARN"\n')
        config = load_config(path)
        self.assertEqual((config.host, config.port), ("127.0.0.1", 8080))
        self.assertEqual((config.max_workers, config.workers_per_dispatcher), (3, 3))
        self.assertEqual(config.log_level, "warn")

    def test_errors_name_the_key(self) -> None:
        """Unknown keys, wrong types and bad values are reported by key name."""
        cases = {
            "unknown configuration key 'queue'": {"queue": 1},
            "'queues' must be an integer": {"queues": "8"},
            "'ui' must be a boolean": {"ui": "yes"},
            "'sender_process' must be a boolean": {"sender_process": 1},
            "'dispatchers' must be at least 1": {"dispatchers": 0},
            "'server_id' must be between 0 and 1023": {"server_id": 1024},
            "'log_level' must be one of": {"log_level": "loud"},
            "'addr' must be host:port": {"addr": "localhost"},
            "'ui_basename' must name a path": {"ui_basename": "/"},
            "'lease_timeout' must be at least 1 second": {"lease_timeout": 0.5},
            "'lease_timeout' must be a number": {"lease_timeout": "30"},
        }
        for message, values in cases.items():
            with self.assertRaises(ConfigError) as e:
                config_from_dict(values)
            self.assertIn(message, str(e.exception))

    def test_lease_timeout_takes_seconds(self) -> None:
        """lease_timeout defaults to 30 s and takes integers or fractions."""
        self.assertEqual(Config().lease_timeout, 30.0)
        self.assertEqual(config_from_dict({"lease_timeout": 5}).lease_timeout, 5.0)
        self.assertEqual(config_from_dict({"lease_timeout": 2.5}).lease_timeout, 2.5)

    def test_bad_file(self) -> None:
        """A missing file or invalid TOML is a ConfigError naming the file."""
        with self.assertRaises(ConfigError) as e:
            load_config("/nonexistent/hq.toml")
        self.assertIn("/nonexistent/hq.toml", str(e.exception))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("addr = \n")
        with self.assertRaises(ConfigError) as e:
            load_config(path)
        self.assertIn("not valid TOML", str(e.exception))
        with open(path, "wb") as f:
            f.write(b'addr = "\xff"\n')
        with self.assertRaises(ConfigError) as e:
            load_config(path)
        self.assertIn("is not UTF-8 text", str(e.exception))

    def test_ui_path_normalised(self) -> None:
        """ui_basename with or without slashes gives one leading, no trailing slash."""
        for given in ("/ui", "/ui/", "ui", "/admin/hq/"):
            self.assertEqual(
                config_from_dict({"ui_basename": given}).ui_path, "/" + given.strip("/")
            )
