"""The database layer's typed errors: each driver error gets the reason on-call acts on."""

import pymysql
import pytest
from sqlalchemy.exc import DBAPIError

from collector.db import classify


@pytest.mark.parametrize(("code", "message", "reason"), [
    (1969, "Query execution was interrupted (max_statement_time exceeded)", "timeout"),
    (3024, "Query execution was interrupted, maximum statement execution time exceeded", "timeout"),
    (1205, "Lock wait timeout exceeded; try restarting transaction", "timeout"),
    (1317, "Query execution was interrupted", "timeout"),
    (1045, "Access denied for user 'ro'@'10.0.0.7' (using password: YES)", "permission"),
    (1044, "Access denied for user 'ro'@'%' to database 'crm'", "permission"),
    (1142, "SELECT command denied to user 'ro'@'10.0.0.7' for table `crm`.`ticket`", "permission"),
    (1792, "Cannot execute statement in a READ ONLY transaction", "permission"),
    (2003, "Can't connect to MySQL server on '10.0.0.9'", "connection"),
    (2006, "MySQL server has gone away", "connection"),
    (2013, "Lost connection to MySQL server during query", "connection"),
    (1064, "You have an error in your SQL syntax; check the manual near 'FORM t'", "query"),
    (1054, "Unknown column 'readonly' in 'WHERE'", "query"),
    (1146, "Table 'crm.ticket' doesn't exist", "query"),
])
def test_mariadb_and_mysql_errors_get_their_reason_by_number(code: int, message: str, reason: str) -> None:
    error = DBAPIError("SELECT 1", None, pymysql.err.OperationalError(code, message))
    typed = classify("crm", error, "process problem: ")
    assert typed.reason == reason
    assert str(typed) == f"source crm: process problem: {message} (error {code})"
