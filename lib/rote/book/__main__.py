"""`python -m rote.book`: build the book (`rote.book.build`)."""
from rote.book.build import main

main()
